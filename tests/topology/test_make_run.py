"""`make run`'s periodic work: the embedded default runs the production schedule on its own.

`make run` starts a private Redis, then the Procfile (gateway, Celery worker, beat), so the same beat
schedule as production sends the same tasks; HEADROOM_BEAT_SCALE only shortens its intervals here.
"""

import signal

import pytest

from keys.models import ProviderKey
from tests.topology.conftest import MODEL, PROMPT, PROVIDER, Member, catalogue, pause_by_429s_and_see_it_resume
from tests.topology.processes import start_make_run

pytestmark = pytest.mark.timeout(300)

Status = ProviderKey.Status


def test_make_run_resumes_a_paused_key_and_finishes_draining_a_removed_one_by_itself(transactional_db, fake,
                                                                                      tmp_path):
    with start_make_run(tmp_path) as server:
        server.wait_ready()
        catalogue(fake)
        member = Member.sign_up(server.url, byok_fallback=False)
        secret = "sk-fake-makerun-" + "x" * 24
        key_id = member.add_key(secret, byok=True)["id"]
        member.wait_for_status(key_id, Status.ACTIVE)  # verified by the worker, off the request path
        pause_by_429s_and_see_it_resume(member, key_id=key_id, secret=secret, fake=fake)

        # given: a stream in flight on the key (40 chunks, 0.1 s apart: the removal lands in the middle)
        fake.chunks, fake.chunk_delay = 40, 0.1
        stream = member.client().chat.completions.create(model=f"{PROVIDER}/{MODEL}", messages=PROMPT, stream=True)
        chunks = iter(stream)
        next(chunks)
        # when: its owner removes it, it takes no new work but finishes the stream
        removed = member.api("DELETE", f"keys/{key_id}")
        assert removed.status_code == 202 and removed.json()["status"] == Status.DISABLING
        rest = list(chunks)
        assert rest and rest[-1].choices[-1].finish_reason == "stop"
        # then: the sweep retires it once nothing is in flight, and its secret is erased
        retired = member.wait_for_status(key_id, Status.INACTIVE)
        moves = [(m["from_status"], m["to_status"], m["reason"]) for m in retired["history"]]
        assert moves[-2:] == [(Status.DISABLING, Status.INACTIVE, "no request in flight"),
                              (Status.INACTIVE, Status.INACTIVE, "secret scrubbed after removal")]
        assert not ProviderKey.objects.get(pk=key_id).has_secret

        # Ctrl-C at the terminal stops every process make run started, Redis included.
        assert server.stop(signal.SIGINT, group=True) == []
