"""``examcache-initdb CONFIG_URI``: run the Alembic migrations on the .ini's
``sqlalchemy.url``, then load the sample data (idempotent: run it again and
nothing is duplicated).

The sample teacher (an admin) is created with ``demo.sample_password`` when the .ini
sets one (development.ini), else with a random password printed once on stdout (only
its hash is stored).  An existing teacher is never changed: re-running initdb -- the
documented way to migrate -- keeps the password and admin flag an operator set."""
from __future__ import annotations

import argparse
import logging
import secrets
import sys
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from pyramid.paster import bootstrap, setup_logging
from sqlalchemy.orm import Session

from pyramid_examcache import register
from pyramid_examcache.cache import get_policy

from ..sample import TEACHER_EMAIL, load_sample_data
from ..security import hash_password
from ..settings import get_demo_settings

log = logging.getLogger(__name__)


def alembic_config(url: str | None = None) -> Config:
    """The Alembic configuration shipped in the package, pointed at ``url``."""
    ini = resources.files("demo_app") / "alembic.ini"
    cfg = Config(str(ini))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` on ``engine``."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # demo.db_statement_timeout is for requests
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def sample_password(registry) -> tuple[str, bool]:
    """The password a new sample teacher gets, and whether it is ``demo.sample_password``
    (else a random one: 24 URL-safe characters, 144 bits)."""
    configured = get_demo_settings(registry).sample_password
    if configured is not None:
        return configured, True
    return secrets.token_urlsafe(18), False


def setup_database(registry) -> dict[str, Any]:
    """Migrate the app's database and load the sample data; returns what was added.

    ``added["password"]`` is the new teacher's password when initdb created the teacher
    with a random one (to print once), else absent."""
    engine = registry["dbengine"]
    upgrade(engine)
    hasher = registry["demo.password_hasher"]
    password, configured = sample_password(registry)
    # a session outside any request: registered with the cache policy, its flushes
    # invalidate the declared keys when it commits (a server may be running)
    with Session(bind=engine) as session:
        register(session, get_policy(registry))
        with session.begin():
            added: dict[str, Any] = load_sample_data(session, hash_password(hasher, password))
    if added["users"] and not configured:
        added["password"] = password
    return added


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config_uri", help="Configuration file, e.g. development.ini")
    return parser.parse_args(argv[1:])


def main(argv=sys.argv) -> int:
    args = parse_args(argv)
    setup_logging(args.config_uri)
    with bootstrap(args.config_uri) as env:
        added = setup_database(env["registry"])
    print(f"database ready; added {added['users']} user(s), {added['exams']} exam(s), "
          f"{added['questions']} question(s)")
    if "password" in added:
        print(f"the sample teacher {TEACHER_EMAIL} (an admin) was created with this password, "
              f"shown only now (only its hash is stored):\n    {added['password']}")
    elif added["users"]:
        print(f"the sample teacher {TEACHER_EMAIL} (an admin) was created with "
              f"demo.sample_password")
    else:
        print(f"the sample teacher {TEACHER_EMAIL} exists: its password and admin flag were "
              f"left as they are")
    return 0


if __name__ == "__main__":
    sys.exit(main())
