"""Address and transaction-hash formats per network family.

A typo in a withdrawal address sends money nowhere, so beyond the shape (a
regular expression per format) the checksums that exist are verified:
base58check for TRON and legacy Bitcoin addresses, bech32/bech32m (BIP 173 /
BIP 350) for SegWit ones. EVM addresses are checked for shape only (their
mixed-case checksum needs Keccak, which the standard library lacks), as are
Solana addresses (plain base58 public keys, no checksum).
"""

import hashlib
import re

from payouts.models import WithdrawalNetwork

Format = WithdrawalNetwork.AddressFormat

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58 = "[1-9A-HJ-NP-Za-km-z]"

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

_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3


def _base58_decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + BASE58_ALPHABET.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    leading_zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * leading_zeros + body


def _base58check_ok(text: str, versions: set[int]) -> bool:
    raw = _base58_decode(text)
    if len(raw) != 25:
        return False
    payload, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        return False
    return payload[0] in versions


def _bech32_polymod(values: list[int]) -> int:
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            checksum ^= generator[i] if (top >> i) & 1 else 0
    return checksum


def _segwit_ok(text: str) -> bool:
    """A mainnet SegWit address with a valid bech32 (v0) or bech32m (v1+) checksum."""
    if text.lower() != text and text.upper() != text:
        return False  # mixed case is invalid in bech32
    hrp, _, data_part = text.lower().rpartition("1")
    if hrp != "bc" or len(data_part) < 7:
        return False
    data = [_BECH32_CHARSET.index(char) for char in data_part]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    constant = _bech32_polymod(expanded + data)
    version = data[0]
    if version > 16:
        return False
    return constant == (_BECH32_CONST if version == 0 else _BECH32M_CONST)


def address_is_valid(*, address_format: str, address: str) -> bool:
    """Whether `address` has the shape (and, where one exists, the checksum) of the format."""
    pattern = ADDRESS_PATTERNS.get(address_format)
    if pattern is None or not pattern.fullmatch(address):
        return False
    if address_format == Format.BITCOIN and address[:3].lower() == "bc1":
        return _segwit_ok(address)
    versions = BASE58CHECK_VERSIONS.get(address_format)
    if versions is not None:
        return _base58check_ok(address, versions)
    return True


def tx_hash_is_valid(*, address_format: str, tx_hash: str) -> bool:
    pattern = TX_HASH_PATTERNS.get(address_format)
    return pattern is not None and pattern.fullmatch(tx_hash) is not None
