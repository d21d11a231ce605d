"""Address and transaction-hash formats per network family.

A typo in a withdrawal address sends money nowhere, so every checksum a format has is verified, by
the reference codecs: `bech32m` (Pieter Wuille's BIP-173/BIP-350 reference code: bech32 for SegWit
v0, bech32m for v1+; PyPI's `bech32` is the 2020 BIP-173 code, which takes a v1 address with a
bech32 checksum, one of BIP-350's invalid vectors), `base58` (base58check for TRON and legacy
Bitcoin) and EIP-55's mixed-case checksum over `eth-hash`'s Keccak-256 for EVM networks. What stays
here are the networks' own rules: Bitcoin mainnet's `bc` HRP and version bytes, TRON's 0x41 prefix,
the payload lengths. Solana addresses are plain base58 public keys (32 bytes): they have no
checksum to verify.
"""

import re

import base58
import bech32m
from eth_hash.auto import keccak

from payouts.models import WithdrawalNetwork

Format = WithdrawalNetwork.AddressFormat

_B58 = "[1-9A-HJ-NP-Za-km-z]"

# The shape first: cheap, and it bounds what the codecs are given.
ADDRESS_PATTERNS: dict[str, re.Pattern] = {
    Format.TRON: re.compile(rf"T{_B58}{{33}}"),
    Format.EVM: re.compile(r"0x[0-9a-fA-F]{40}"),
    Format.SOLANA: re.compile(rf"{_B58}{{32,44}}"),
    Format.BITCOIN: re.compile(rf"[13]{_B58}{{25,34}}|(?:bc1|BC1)[02-9ac-hj-np-zAC-HJ-NP-Z]{{11,71}}"),
}

TX_HASH_PATTERNS: dict[str, re.Pattern] = {
    Format.TRON: re.compile(r"(?:0x)?[0-9a-fA-F]{64}"),
    Format.EVM: re.compile(r"0x[0-9a-fA-F]{64}"),
    Format.SOLANA: re.compile(rf"{_B58}{{64,90}}"),
    Format.BITCOIN: re.compile(r"[0-9a-fA-F]{64}"),
}

BASE58CHECK_VERSIONS: dict[str, set[int]] = {
    Format.TRON: {0x41},
    Format.BITCOIN: {0x00, 0x05},  # P2PKH and P2SH on mainnet
}
BASE58CHECK_PAYLOAD_BYTES = 21  # version byte + 20-byte hash
SEGWIT_MAINNET_HRP = "bc"
SOLANA_PUBLIC_KEY_BYTES = 32
SOLANA_SIGNATURE_BYTES = 64


def _base58check_ok(text: str, versions: set[int]) -> bool:
    try:
        payload = base58.b58decode_check(text)
    except ValueError:  # a wrong checksum (or a character outside the alphabet)
        return False
    return len(payload) == BASE58CHECK_PAYLOAD_BYTES and payload[0] in versions


def _segwit_ok(text: str) -> bool:
    """A mainnet SegWit address: bech32 for v0, bech32m for v1+, the program lengths BIP-141 allows."""
    try:
        bech32m.decode(SEGWIT_MAINNET_HRP, text)
    except bech32m.DecodeError:  # the checksum, the HRP (testnet's tb), the version or the length
        return False
    return True


def _eip55_ok(text: str) -> bool:
    # eth-utils' is_checksum_address is these lines over eth-hash, but it also brings cytoolz, toolz
    # and eth-typing (~17 MB installed, ~100 ms import) for them; eth-hash is the Keccak it uses.
    # An all-lower/upper-case address carries no checksum, so it is refused too: a typo in it would pass.
    digits = text[2:].lower()
    digest = keccak(digits.encode("ascii")).hex()
    expected = "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(digits, digest, strict=False))
    return text[2:] == expected


def _base58_length_ok(text: str, length: int) -> bool:
    try:
        return len(base58.b58decode(text)) == length
    except ValueError:
        return False


def address_is_valid(*, address_format: str, address: str) -> bool:
    """Whether `address` has the shape and, where one exists, the checksum of the format."""
    pattern = ADDRESS_PATTERNS.get(address_format)
    if pattern is None or not pattern.fullmatch(address):
        return False
    if address_format == Format.BITCOIN and address[:3].lower() == "bc1":
        return _segwit_ok(address)
    if address_format == Format.EVM:
        return _eip55_ok(address)
    if address_format == Format.SOLANA:
        return _base58_length_ok(address, SOLANA_PUBLIC_KEY_BYTES)
    return _base58check_ok(address, BASE58CHECK_VERSIONS[address_format])


def tx_hash_is_valid(*, address_format: str, tx_hash: str) -> bool:
    """Whether `tx_hash` has the shape of the network's transaction ids (they carry no checksum)."""
    pattern = TX_HASH_PATTERNS.get(address_format)
    if pattern is None or not pattern.fullmatch(tx_hash):
        return False
    if address_format == Format.SOLANA:
        return _base58_length_ok(tx_hash, SOLANA_SIGNATURE_BYTES)
    return True
