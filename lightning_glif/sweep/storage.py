"""The study's storage: an embedded SQLite file inside ``--out`` by default, or any URL Optuna's
RDB storage accepts (``--storage postgresql://user@host:5432/db`` for many machines).

The embedded default is SQLite through :class:`optuna.storages.RDBStorage` rather than Optuna's
journal file: both are safe with several processes on one machine (SQLite serialises writers with
its file locks; a busy writer waits up to :data:`SQLITE_TIMEOUT_S`), but only the RDB storage has
Optuna's heartbeat, which is what finds the trial of a killed worker (its heartbeat goes stale)
and hands it to :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` to retry. SQLite's locks
do not work on many network filesystems: for workers on several machines use PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import optuna

EMBEDDED = "study.db"  # the embedded storage's file inside --out
SQLITE_TIMEOUT_S = 60  # how long a writer waits for SQLite's lock before an error
HEARTBEAT_S = 10  # default seconds between a running trial's heartbeats
GRACE_FACTOR = 3  # a trial whose heartbeat is GRACE_FACTOR x heartbeat old is stale
MAX_RETRIES = 2  # default retries of a trial whose worker was lost

optuna.logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def quiet():
    """Without Optuna's ExperimentalWarning: the heartbeat and its retry callback have been
    "experimental" since Optuna 2.8 and are what this module is built on (pinned <6)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def fail_stale_trials(study: optuna.Study) -> None:
    """:func:`optuna.storages.fail_stale_trials`: fail the trials whose heartbeat is stale and
    queue their retries."""
    with quiet():
        optuna.storages.fail_stale_trials(study)


class StorageError(RuntimeError):
    """A storage that cannot be opened, or a study that is not in it; the message says why."""


def storage_url(storage: str | None, out: str | Path) -> str:
    """``storage`` as a SQLAlchemy URL, or the embedded SQLite file ``OUT/study.db``.

    ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg://``: the driver this
    project installs (psycopg 3), whatever SQLAlchemy's default PostgreSQL driver is."""
    if not storage:
        path = Path(out).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path / EMBEDDED}"
    for prefix in ("postgres://", "postgresql://"):
        if storage.startswith(prefix):
            return "postgresql+psycopg://" + storage[len(prefix) :]
    return storage


def open_storage(
    url: str, heartbeat: int = HEARTBEAT_S, max_retries: int = MAX_RETRIES
) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` with a heartbeat every ``heartbeat`` seconds and up to
    ``max_retries`` retries of a trial whose heartbeat went stale; :class:`StorageError` naming
    the problem and the fix when it cannot be opened."""
    if heartbeat < 1:
        raise StorageError(f"--heartbeat must be at least 1 (seconds), got {heartbeat}.")
    if max_retries < 0:
        raise StorageError(f"--max-retries must be 0 or more, got {max_retries}.")
    import sqlalchemy.exc

    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        with quiet():
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=GRACE_FACTOR * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retries
                ),
            )
    except ImportError as e:
        raise StorageError(
            f"--storage {redact(url)}: {e} For PostgreSQL: pip install 'psycopg[binary]' "
            "(in requirements.txt)."
        ) from None
    except sqlalchemy.exc.ArgumentError as e:
        raise StorageError(
            f"--storage {redact(url)} is not a database URL Optuna can open ({e}). Use e.g. "
            "postgresql://USER:PASSWORD@HOST:5432/DB or sqlite:////abs/path/study.db."
        ) from None
    except sqlalchemy.exc.OperationalError as e:
        reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
        raise StorageError(
            f"cannot connect to --storage {redact(url)}: {reason}. Check that the database "
            "server runs and is reachable from this machine, and the URL's user, host, port and "
            "database."
        ) from None


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


def load_study(storage: optuna.storages.BaseStorage, name: str, url: str) -> optuna.Study:
    """The study ``name``; :class:`StorageError` listing the storage's studies if it is not
    there."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise StorageError(
            f"no study {name!r} in {redact(url)} (it has: {', '.join(names) or 'none'}). "
            "Create it with `ablate.py enqueue` (or `ablate.py search`), or pass --study with "
            "one of those names."
        ) from None
