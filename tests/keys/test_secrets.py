"""A canary secret goes through everything a key lives through; it must never appear in logs, API
responses, admin pages, task arguments, error pages or raw database rows. And encryption: rotation
re-encrypts 100% of rows, an old-key-only secret fails closed."""

import hashlib
import io
import logging
import secrets
from decimal import Decimal
from unittest import mock

import pytest
from celery.app.task import Task
from cryptography.fernet import Fernet, MultiFernet
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from keys.crypto import SecretDecryptError, decrypt_secret, encrypt_secret
from keys.models import ProviderKey, ProviderKeyStats
from keys.services import (
    provider_key_record_429,
    provider_key_record_failure,
    provider_key_secret,
)
from keys.tasks import (
    provider_key_probe_task,
    provider_key_reverify_exchange_task,
    provider_keys_probe_paused_task,
    provider_keys_reverify_exchange_task,
    provider_keys_sweep_task,
)
from tests.accounts.test_api_keys import _all_database_text
from tests.fakeprovider import mask_key
from tests.keys.factories import enrol, key_in_state

pytestmark = pytest.mark.django_db
S = ProviderKey.Status


def _canary() -> str:
    return f"sk-CANARY-{secrets.token_hex(16)}-zq9x"


def _fragments(secret: str) -> list[str]:
    """The secret, its distinctive middle, and what a provider echoes of it in error bodies."""
    return [secret, secret[10:42], mask_key(secret)]


def _assert_absent(secret: str, text: str, where: str) -> None:
    for fragment in _fragments(secret):
        assert fragment not in text, f"{fragment!r} leaked into {where}"


@pytest.fixture
def task_calls():
    """Every (task name, args, kwargs) handed to Celery, eager or not."""
    calls = []
    original = Task.apply_async

    def record(self, args=None, kwargs=None, **options):
        calls.append((self.name, args, kwargs))
        return original(self, args, kwargs, **options)

    with mock.patch.object(Task, "apply_async", autospec=True, side_effect=record):
        yield calls


def _lifecycle(api, member, make_provider, fake, secret, django_capture_on_commit_callbacks, settings):
    """Everything a key goes through: enrolment and verification, a flag change, a failed upstream,
    429s and a probe, re-verification, revalidation, rotation, removal. Returns the API responses."""
    make_provider("deepseek", slug="deepseek")
    fake.script(secret, balance=Decimal("5.00"))
    responses = []
    with django_capture_on_commit_callbacks(execute=True):
        responses.append(api.post("/api/v1/keys", {"provider": "deepseek", "secret": secret, "exchange": True,
                                                   "label": "canary"}, format="json"))
    key_id = responses[0].json()["id"]
    responses.append(api.get(f"/api/v1/keys/{key_id}"))
    responses.append(api.patch(f"/api/v1/keys/{key_id}", {"donate_to_pool": True, "consent": True}, format="json"))
    provider_key_reverify_exchange_task.delay(key_id)
    provider_keys_reverify_exchange_task.delay()
    fake.script(secret, status=429, retry_after=0)
    for _ in range(3):
        provider_key_record_429(key_id=key_id, retry_after_seconds=0)
    provider_keys_probe_paused_task.delay()
    provider_key_probe_task.delay(key_id)
    fake.script(secret, status=401)
    with django_capture_on_commit_callbacks(execute=True):
        responses.append(api.post(f"/api/v1/keys/{key_id}/reactivate"))
    provider_key_reverify_exchange_task.delay(key_id)  # rejected -> exhausted
    with django_capture_on_commit_callbacks(execute=True):
        responses.append(api.post(f"/api/v1/keys/{key_id}/revalidate"))  # -> failed (401)
    provider_key_record_failure(key_id=key_id, reason="upstream 500 before the first byte")
    provider_keys_sweep_task.delay()
    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.HEADROOM_FIELD_ENCRYPTION_KEYS]
    call_command("rotate_encryption_keys", stdout=io.StringIO())
    responses.append(api.get("/api/v1/keys"))
    responses.append(api.get("/api/v1/providers"))
    return key_id, responses


def test_the_canary_never_reaches_logs_responses_task_arguments_or_the_database(
    api, member, make_provider, fake, caplog, task_calls, django_capture_on_commit_callbacks, settings
):
    secret = _canary()
    caplog.set_level(logging.DEBUG)
    key_id, responses = _lifecycle(
        api, member, make_provider, fake, secret, django_capture_on_commit_callbacks, settings
    )

    # the key really went through its life (so the checks below are not vacuous)
    key = ProviderKey.objects.get(pk=key_id)
    assert provider_key_secret(key=key) == secret
    assert {r.key for r in fake.requests} == {secret}
    assert len(task_calls) >= 8

    # logs, at DEBUG, including every record's arguments
    log_text = caplog.text + "\n".join(repr((r.args, r.__dict__)) for r in caplog.records)
    _assert_absent(secret, log_text, "the logs")
    # API responses
    for response in responses:
        assert response.status_code < 500
        _assert_absent(secret, response.content.decode(), f"the response to {response.request['PATH_INFO']}")
    # task arguments: ids only
    for name, args, kwargs in task_calls:
        _assert_absent(secret, repr((args, kwargs)), f"the arguments of {name}")
        assert all(isinstance(a, int) for a in (args or ())) and not kwargs
    # raw database rows, including the audit trail and last_error texts; the fingerprint is keyed,
    # not a bare hash anyone could compute from a guessed secret
    dump = _all_database_text()
    _assert_absent(secret, dump, "the database")
    assert hashlib.sha256(secret.encode()).hexdigest() not in dump


def test_removal_scrubs_the_secret_from_the_row(api, make_provider, django_capture_on_commit_callbacks):
    make_provider("none", slug="groq")
    secret = _canary()
    key_id = api.post("/api/v1/keys", {"provider": "groq", "secret": secret}, format="json").json()["id"]
    ciphertext = ProviderKey.objects.get(pk=key_id).secret_ciphertext
    with django_capture_on_commit_callbacks(execute=True):
        api.delete(f"/api/v1/keys/{key_id}")
    key = ProviderKey.objects.get(pk=key_id)
    assert (key.secret_ciphertext, key.fingerprint) == ("", "")
    assert ciphertext not in _all_database_text()
    with pytest.raises(SecretDecryptError):
        provider_key_secret(key=key)


def test_admin_pages_never_show_the_secret_or_its_ciphertext(admin_client, member, make_provider):
    secret = _canary()
    key = enrol(member, make_provider("none"), secret=secret, byok=True)
    key.refresh_from_db()
    pages = [
        "/admin/keys/providerkey/",
        f"/admin/keys/providerkey/{key.pk}/change/",
        "/admin/keys/providerkeytransition/",
        "/admin/keys/poolconsent/",
        "/admin/keys/providerkey/add/",
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        html = response.content.decode()
        _assert_absent(secret, html, page)
        assert key.secret_ciphertext not in html and key.fingerprint not in html
    assert "…" + secret[-4:] in admin_client.get("/admin/keys/providerkey/").content.decode()


def test_the_admin_add_form_does_not_echo_a_refused_secret(admin_client, member, make_provider):
    provider = make_provider("none")
    secret = _canary()
    enrol(member, provider, secret=secret)
    response = admin_client.post(
        "/admin/keys/providerkey/add/", {"provider": provider.pk, "label": "dup", "secret": secret}
    )
    assert response.status_code == 200  # the form again, with the reason
    html = response.content.decode()
    assert "duplicate key" in html
    _assert_absent(secret, html, "the admin add form")


@pytest.mark.parametrize("debug", [False, True])
def test_error_pages_never_show_the_secret(debug, member, make_provider, settings):
    settings.DEBUG = debug
    make_provider("none", slug="groq")
    secret = _canary()
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(member)
    with mock.patch.object(ProviderKeyStats.objects, "create", side_effect=RuntimeError("database on fire")):
        json_body = client.post("/api/v1/keys", {"provider": "groq", "secret": secret}, format="json")
        form_body = client.post("/api/v1/keys", {"provider": "groq", "secret": secret})
    for response in (json_body, form_body):
        assert response.status_code == 500
        text = response.content.decode()
        if debug:
            assert "database on fire" in text  # the technical page, with its frames and variables
        _assert_absent(secret, text, f"the {'technical ' if debug else ''}500 page")


def test_validation_errors_do_not_echo_the_secret(api, make_provider):
    make_provider("none", slug="groq")
    for payload in (
        {"provider": "groq", "secret": "sk-" + "CANARY" * 100},  # too long
        {"provider": "groq", "secret": "sk-CANARY with spaces 1234"},
        {"provider": "no such", "secret": "sk-CANARY-1234567890abcdef"},
    ):
        response = api.post("/api/v1/keys", payload, format="json")
        assert response.status_code == 400
        assert "CANARY" not in response.content.decode()


# --- encryption at rest and rotation ---------------------------------------------------------------


def test_rotation_re_encrypts_every_row_under_the_newest_key(settings):
    # given secrets written under the old key only, and one already removed
    old, new = settings.HEADROOM_FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = [old]
    plain = {key_in_state(state).pk: None for state in (S.ACTIVE, S.PAUSED, S.INACTIVE, S.PENDING, S.FAILED)}
    for key in ProviderKey.objects.all():
        plain[key.pk] = decrypt_secret(key.secret_ciphertext)
    fingerprints = dict(ProviderKey.objects.values_list("pk", "fingerprint"))
    scrubbed = key_in_state(S.INACTIVE)
    ProviderKey.objects.filter(pk=scrubbed.pk).update(secret_ciphertext="", fingerprint="")

    # when the operator puts a new key first and rotates
    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = [new, old]
    out = io.StringIO()
    call_command("rotate_encryption_keys", stdout=out)

    # then 100% of the rows holding a secret open with the new key alone, unchanged
    assert out.getvalue().startswith("5 secret(s) re-encrypted")
    only_new = MultiFernet([Fernet(new.encode())])
    for key in ProviderKey.objects.exclude(secret_ciphertext=""):
        assert only_new.decrypt(key.secret_ciphertext.encode()).decode() == plain[key.pk]
        assert key.fingerprint == fingerprints[key.pk]
    assert ProviderKey.objects.get(pk=scrubbed.pk).secret_ciphertext == ""
    # and the old key can go
    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = [new]
    for key in ProviderKey.objects.exclude(secret_ciphertext=""):
        assert provider_key_secret(key=key) == plain[key.pk]


def test_a_secret_only_an_old_key_opens_fails_closed(settings, make_provider, fake):
    # given a row encrypted under a key that is no longer configured
    retired = Fernet.generate_key().decode()
    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = [retired]
    key = key_in_state(S.PENDING, provider=make_provider("none"))
    ciphertext = key.secret_ciphertext
    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    # decrypting raises, and never hands back the ciphertext or an empty string
    with pytest.raises(SecretDecryptError) as refused:
        provider_key_secret(key=key)
    assert ciphertext not in str(refused.value)
    # rotation leaves the row alone and names it
    with pytest.raises(CommandError, match=rf"key ids {key.pk}\b"):
        call_command("rotate_encryption_keys", stdout=io.StringIO())
    assert ProviderKey.objects.get(pk=key.pk).secret_ciphertext == ciphertext
    # verification fails the key with the reason, without calling the provider
    from keys.tasks import provider_key_verify_task

    provider_key_verify_task.delay(key.pk)
    key.refresh_from_db()
    assert (key.status, key.last_error) == (S.FAILED, "the stored secret cannot be decrypted with the configured keys")
    assert fake.count() == 0


def test_tampered_ciphertext_fails_closed(settings):
    token = encrypt_secret("sk-some-secret-0123456789")
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(SecretDecryptError):
        decrypt_secret(tampered)
    with pytest.raises(SecretDecryptError):
        decrypt_secret("")


def test_no_configured_encryption_key_refuses_to_store_secrets(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.HEADROOM_FIELD_ENCRYPTION_KEYS = []
    with pytest.raises(ImproperlyConfigured):
        encrypt_secret("sk-some-secret-0123456789")
