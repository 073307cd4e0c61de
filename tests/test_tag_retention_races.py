"""Tag expiry racing re-pushes: a push that commits while a sweep runs is never lost.

The outcome is decided by the clock, not by the interleaving: every tag is expired when the sweeps start,
and a re-push gives it a future expiry, so whatever order SQLite's write lock picks, a re-pushed tag must end
up present (pointing at what was pushed last, with its manifest and blobs) and every other tag gone.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from cargohold.lifecycle.tag_retention import TagRetention
from cargohold.metadata.models import Manifest, ManifestReference
from test_lifecycle_support import OCI_CONFIG, OCI_MANIFEST, Env, FakeClock, make_env


def _push(env: Env, repository: str, tag: str, salt: str) -> str:
    config = env.put_blob(repository, json.dumps({"salt": salt}).encode())
    config["mediaType"] = OCI_CONFIG
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []}
    return env.put_manifest(repository, body, [tag])


def test_repush_during_expiry_sweeps_is_never_lost(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC))
    env = make_env(tmp_path, clock)
    repo = f"{env.control.create_project('race', retention=timedelta(days=1)).id}/app"
    names = [f"t{i}" for i in range(60)]
    for name in names:
        _push(env, repo, name, f"{name}-old")
    clock.advance(timedelta(days=2))  # every tag above has expired; a push from now on expires tomorrow
    repushed: dict[str, str] = {}
    done = threading.Event()
    failures: list[BaseException] = []

    def pusher() -> None:
        try:
            for name in random.Random(7).sample(names, 30):
                repushed[name] = _push(env, repo, name, f"{name}-new")
        except BaseException as exc:  # surfaced by the main thread
            failures.append(exc)
        finally:
            done.set()

    tags = TagRetention(env.db, clock=clock, batch_size=2)
    thread = threading.Thread(target=pusher)
    thread.start()
    sweeps = 0
    while not done.is_set() or sweeps < 2:
        tags.expire()
        tags.collect_untagged()
        sweeps += 1
    thread.join()
    assert failures == []
    tags.expire()
    tags.collect_untagged()

    for name in names:
        stored = env.metadata.get_manifest(repo, name, by_digest=False)
        if name in repushed:
            assert stored is not None and stored.digest == repushed[name], name
            config = json.loads(stored.payload)["config"]["digest"]
            assert env.metadata.linked_blob_size(repo, config) is not None
        else:
            assert stored is None, name
    with env.db.read() as session:
        manifests = session.scalar(select(func.count()).select_from(Manifest))
        dangling = session.scalar(
            select(func.count())
            .select_from(ManifestReference)
            .where(ManifestReference.manifest_id.not_in(select(Manifest.id)))
        )
    assert manifests == len(repushed) and dangling == 0
    assert sweeps >= 2


def test_push_between_the_sweeps_read_and_its_write_keeps_the_tag(tmp_path: Path) -> None:
    """The same race, forced: the re-push lands after the sweep chose the tag and before it deletes."""
    clock = FakeClock(datetime.now(UTC))
    env = make_env(tmp_path, clock)
    repo = f"{env.control.create_project('race', retention=timedelta(days=1)).id}/app"
    _push(env, repo, "hot", "old")
    _push(env, repo, "cold", "old")
    clock.advance(timedelta(days=2))
    tags = TagRetention(env.db, clock=clock)
    chosen = tags._expire_batch
    pushed: list[str] = []

    def push_first(keys: list[tuple[int, str]], actor: str, *, dry_run: bool) -> object:
        assert sorted(name for _, name in keys) == ["cold", "hot"]  # both were read as expired
        pushed.append(_push(env, repo, "hot", "new"))
        return chosen(keys, actor, dry_run=dry_run)

    tags._expire_batch = push_first  # type: ignore[method-assign]
    assert [e.tag for e in tags.expire()[0]] == ["cold"]
    stored = env.metadata.get_manifest(repo, "hot", by_digest=False)
    assert stored is not None and stored.digest == pushed[0]
