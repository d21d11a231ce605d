"""Withdrawal addresses against each network's published test vectors, and one-character typos.

Vectors, copied as published:
- SegWit: BIP-350 "Test vectors for v0-v16 native segregated witness addresses" (valid and invalid),
  which include BIP-173's v0 vectors, and BIP-173's invalid ones
  (github.com/bitcoin/bips, bip-0173.mediawiki and bip-0350.mediawiki).
- EVM: EIP-55's four examples (github.com/ethereum/EIPs, EIPS/eip-55.md).
- base58check: Bitcoin's genesis P2PKH address, the P2SH example of BIP-13's era and the P2PKH example
  of the Bitcoin wiki's "Address" page; TRON's developer documentation example
  (hex 418840E6C55B9ADA326D211D818C34A994AECED808 = TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL), and USDT's
  TRC-20 contract.
"""

import pytest

from core.money import parse_usd
from payouts.addresses import address_is_valid, tx_hash_is_valid
from payouts.models import Withdrawal, WithdrawalNetwork
from tests.payouts.factories import ADDRESSES, frozen_balance, fund_frozen

Format = WithdrawalNetwork.AddressFormat

BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
HEX = "0123456789abcdef"

SEGWIT_MAINNET_VALID = [
    "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
    "BC1SW50QGDZ25J",
    "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs",
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
]
SEGWIT_TESTNET_VALID = [  # valid, but not on the mainnet we pay out on
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
    "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
    "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
]
SEGWIT_INVALID = [
    # BIP-350
    "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",  # invalid human-readable part
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # Bech32 instead of Bech32m
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",  # Bech32 instead of Bech32m
    "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",  # Bech32 instead of Bech32m
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # Bech32m instead of Bech32
    "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",  # Bech32m instead of Bech32
    "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",  # invalid character in checksum
    "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",  # invalid witness version
    "bc1pw5dgrnzv",  # invalid program length (1 byte)
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",  # 41 bytes
    "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # invalid program length for witness version 0
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",  # mixed case
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",  # zero padding of more than 4 bits
    "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",  # non-zero padding in 8-to-5
    "bc1gmk9yu",  # empty data section
    # BIP-173
    "tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty",  # invalid human-readable part
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",  # invalid checksum
    "BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2",  # invalid witness version
    "bc1rw5uspcuh",  # invalid program length
    "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",  # invalid program length
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",  # mixed case
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv",  # non-zero padding
]
BITCOIN_BASE58_VALID = [
    "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",  # P2PKH (genesis block)
    "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",  # P2SH
    "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",  # P2PKH
]
TRON_VALID = ["TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"]
EIP55_VALID = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
SOLANA_VALID = ["EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v", "11111111111111111111111111111111"]

VALID = (
    [(Format.BITCOIN, a) for a in SEGWIT_MAINNET_VALID + BITCOIN_BASE58_VALID]
    + [(Format.TRON, a) for a in TRON_VALID]
    + [(Format.EVM, a) for a in EIP55_VALID]
    + [(Format.SOLANA, a) for a in SOLANA_VALID]
)


def _next_in(alphabet: str, char: str) -> str:
    return alphabet[(alphabet.index(char) + 1) % len(alphabet)]


def _typos(address_format: str, address: str):
    """Every one-character substitution of the address, past its fixed prefix, within its alphabet."""
    if address_format == Format.EVM:
        prefix, alphabet = 2, HEX
    elif address[:3].lower() == "bc1":
        prefix, alphabet = 3, BECH32_CHARSET
    else:
        prefix, alphabet = 1, BASE58_ALPHABET
    for i in range(prefix, len(address)):
        char = address[i]
        if alphabet in (HEX, BECH32_CHARSET):  # case-insensitive alphabets: keep the address's case
            wrong = _next_in(alphabet, char.lower())
            wrong = wrong.upper() if char.isupper() else wrong
        else:
            wrong = _next_in(alphabet, char)
        yield address[:i] + wrong + address[i + 1 :]


@pytest.mark.parametrize(("address_format", "address"), VALID)
def test_published_valid_addresses_are_accepted(address_format, address):
    assert address_is_valid(address_format=address_format, address=address)


@pytest.mark.parametrize("address", SEGWIT_INVALID + SEGWIT_TESTNET_VALID)
def test_published_invalid_and_testnet_segwit_addresses_are_refused(address):
    assert not address_is_valid(address_format=Format.BITCOIN, address=address)


@pytest.mark.parametrize(("address_format", "address"), [v for v in VALID if v[0] != Format.SOLANA])
def test_every_one_character_typo_is_refused(address_format, address):
    # Solana addresses are left out: a plain public key has no checksum to catch a typo.
    typos = list(_typos(address_format, address))
    assert len(typos) >= 11
    accepted = [typo for typo in typos if address_is_valid(address_format=address_format, address=typo)]
    assert accepted == []


@pytest.mark.parametrize(
    "address",
    [
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",  # no checksum: a typo in it could not be seen
        "0x5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1Beaed",  # one letter's case wrong
    ],
)
def test_an_evm_address_must_carry_its_eip55_checksum(address):
    assert not address_is_valid(address_format=Format.EVM, address=address)


@pytest.mark.parametrize(
    ("address_format", "address"),
    [
        (Format.TRON, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),  # a valid base58check, Bitcoin's version byte
        (Format.BITCOIN, "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"),  # TRON's 0x41
        (Format.SOLANA, "z" * 44),  # 44 base58 characters, but 33 bytes
    ],
)
def test_a_valid_encoding_of_another_network_is_refused(address_format, address):
    assert not address_is_valid(address_format=address_format, address=address)


@pytest.mark.parametrize(
    ("address_format", "tx_hash", "valid"),
    [
        (Format.SOLANA, "5" * 88, True),
        (Format.SOLANA, "z" * 88, False),  # 88 base58 characters, but more than 64 bytes
        (Format.EVM, "0x" + "b" * 64, True),
        (Format.BITCOIN, "c" * 63, False),
    ],
)
def test_transaction_hashes_have_their_network_shape(address_format, tx_hash, valid):
    assert tx_hash_is_valid(address_format=address_format, tx_hash=tx_hash) is valid


@pytest.mark.django_db
@pytest.mark.parametrize("network", [code for code in ADDRESSES if code != "USDC-SOL"])  # no checksum there
def test_a_withdrawal_to_an_address_with_a_typo_is_refused_and_holds_nothing(authed_client, user, network):
    # given a funded member and a real address of the network with one character changed
    fund_frozen(user, "10.00")
    address_format = WithdrawalNetwork.objects.get(code=network).address_format
    typo = next(_typos(address_format, ADDRESSES[network]))
    # when they ask for a withdrawal to it
    response = authed_client.post(
        "/api/v1/payouts/withdrawals", {"amount": "10.00", "network": network, "address": typo}, format="json"
    )
    # then it is refused with the stable code, and nothing is held
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_address"
    assert frozen_balance(user) == parse_usd("10.00")
    assert not Withdrawal.objects.exists()
