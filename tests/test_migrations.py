"""One migration history for SQLite and PostgreSQL: it upgrades, downgrades to nothing,
upgrades again, has exactly one head, and matches the models exactly (no drift).

Each test migrates a database of its own: a fresh SQLite file, or a PostgreSQL database this
test creates (`sentinel_cp_mig_<random>`) on the server of the `postgres_url` fixture and drops
at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import build_app


def _server_url(postgres_url: str, database: str) -> str:
    return f"{postgres_url.rsplit('/', 1)[0]}/{database}"


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_app(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_redis_url: str
) -> Iterator[Any]:
    """An app on an empty database of its own (nothing migrated yet)."""
    created: str | None = None
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp_path / 'migrations.db'}"
    else:
        import psycopg

        postgres_url = request.getfixturevalue("postgres_url")
        created = f"sentinel_cp_mig_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{created}"')
        database_url = _server_url(postgres_url, created)
    flask_app = build_app(tmp_path, database_url, embedded_redis_url)
    try:
        yield flask_app
    finally:
        from sentinel_cp.db import db

        with flask_app.app_context():
            db.engine.dispose()
        if created is not None:
            import psycopg

            with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)')


def table_names(app: Any) -> set[str]:
    from sentinel_cp.db import db

    with app.app_context():
        return set(sa.inspect(db.engine).get_table_names())


def model_tables(app: Any) -> set[str]:
    from sentinel_cp.db import db

    with app.app_context():
        return set(db.metadata.tables)


def upgrade(app: Any, revision: str = "head") -> None:
    from flask_migrate import upgrade as flask_upgrade

    with app.app_context():
        flask_upgrade(revision=revision)


def downgrade(app: Any, revision: str = "base") -> None:
    from flask_migrate import downgrade as flask_downgrade

    with app.app_context():
        flask_downgrade(revision=revision)


def current_revision(app: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from sentinel_cp.db import db

    with app.app_context(), db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def script_directory(app: Any) -> Any:
    from alembic.script import ScriptDirectory

    with app.app_context():
        config = app.extensions["migrate"].migrate.get_config()
        return ScriptDirectory.from_config(config)


def schema_differences(app: Any) -> list[Any]:
    """What autogenerate would write: the difference between the models and the schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from sentinel_cp.db import db

    options = {
        "compare_type": True,
        "compare_server_default": True,
        **app.extensions["migrate"].configure_args,
    }
    options.pop("process_revision_directives", None)
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=options)
        return list(compare_metadata(context, db.metadata))


# --- the history ------------------------------------------------------------------------------


def test_migration_history_has_exactly_one_head(fresh_app: Any) -> None:
    heads = script_directory(fresh_app).get_heads()
    assert len(heads) == 1, heads


def test_migration_history_has_exactly_one_base(fresh_app: Any) -> None:
    bases = script_directory(fresh_app).get_bases()
    assert len(bases) == 1, bases


def test_every_revision_has_a_downgrade(fresh_app: Any) -> None:
    for revision in script_directory(fresh_app).walk_revisions():
        assert callable(getattr(revision.module, "downgrade", None)), revision.revision


# --- up, down, up -----------------------------------------------------------------------------


def test_upgrade_from_empty_to_head_creates_every_model_table(fresh_app: Any) -> None:
    assert table_names(fresh_app) == set()
    upgrade(fresh_app)
    head = script_directory(fresh_app).get_current_head()
    assert current_revision(fresh_app) == head
    tables = table_names(fresh_app)
    assert model_tables(fresh_app) <= tables
    assert tables - model_tables(fresh_app) == {"alembic_version"}


def test_upgrade_twice_is_a_no_op(fresh_app: Any) -> None:
    upgrade(fresh_app)
    before = table_names(fresh_app)
    upgrade(fresh_app)
    assert table_names(fresh_app) == before


def test_downgrade_to_base_leaves_no_application_tables(fresh_app: Any) -> None:
    upgrade(fresh_app)
    downgrade(fresh_app, "base")
    assert table_names(fresh_app) <= {"alembic_version"}
    assert current_revision(fresh_app) is None


def test_upgrade_again_after_downgrade_works(fresh_app: Any) -> None:
    upgrade(fresh_app)
    downgrade(fresh_app, "base")
    upgrade(fresh_app)
    assert model_tables(fresh_app) <= table_names(fresh_app)
    assert current_revision(fresh_app) == script_directory(fresh_app).get_current_head()
    assert schema_differences(fresh_app) == []


def test_each_revision_steps_down_and_up_one_at_a_time(fresh_app: Any) -> None:
    revisions = list(script_directory(fresh_app).walk_revisions())  # head first
    upgrade(fresh_app)
    for revision in revisions:
        downgrade(fresh_app, "-1")
        assert current_revision(fresh_app) == revision.down_revision
    assert table_names(fresh_app) <= {"alembic_version"}
    for revision in reversed(revisions):
        upgrade(fresh_app, "+1")
        assert current_revision(fresh_app) == revision.revision


# --- no drift ---------------------------------------------------------------------------------


def test_models_and_migrated_schema_do_not_drift(fresh_app: Any) -> None:
    upgrade(fresh_app)
    differences = schema_differences(fresh_app)
    assert differences == [], f"models differ from the migrations: {differences}"


def test_flask_migrate_check_finds_nothing_to_generate(fresh_app: Any) -> None:
    from flask_migrate import check

    upgrade(fresh_app)
    with fresh_app.app_context():
        check()  # exits non-zero (SystemExit) when autogenerate would produce a migration


def test_drift_check_detects_a_schema_change(fresh_app: Any) -> None:
    """The comparison is live: a column the models do not know about is reported."""
    from sentinel_cp.db import db

    upgrade(fresh_app)
    with fresh_app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE projects ADD COLUMN stray INTEGER"))
    differences = schema_differences(fresh_app)
    assert any(
        diff[0] == "remove_column" and diff[2] == "projects" and diff[3].name == "stray"
        for diff in differences
        if isinstance(diff, tuple)
    ), differences


def test_migrated_schema_stores_and_reads_a_row(fresh_app: Any) -> None:
    from conftest import make_project

    upgrade(fresh_app)
    make_project(fresh_app, "mig-check")
    from sentinel_cp import projects

    with fresh_app.app_context():
        assert projects.get_project("mig-check").name == "Mig-Check"
