"""First start: the admin user and the default project, created once and audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from sentinel_cp import accounts, projects
from sentinel_cp.audit import Actor
from sentinel_cp.config import Settings
from sentinel_cp.db import db


@dataclass(frozen=True)
class FirstStart:
    admin_email: str | None
    generated_password: str | None
    project_slug: str | None


def ensure_initial_state(settings: Settings) -> FirstStart:
    """Create the admin (when no user exists) and the default project (when none exists).

    Safe to run on every start and from several processes: a second run finds the rows, and
    a concurrent first run loses on the unique constraints and rolls back.
    """
    actor = Actor.system("bootstrap")
    admin_email = generated = project_slug = None
    try:
        if not db.session.scalar(select(func.count()).select_from(accounts.User)):
            password = settings.admin_password
            if password is None:
                password = generated = secrets.token_urlsafe(18)
            accounts.create_user(actor, email=settings.admin_email, password=password, role="admin")
            admin_email = settings.admin_email
        if not db.session.scalar(select(func.count()).select_from(projects.Project)):
            projects.create_project(
                actor,
                slug=settings.default_project,
                name=settings.default_project.replace("-", " ").title(),
            )
            project_slug = settings.default_project
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return FirstStart(None, None, None)
    return FirstStart(admin_email, generated, project_slug)
