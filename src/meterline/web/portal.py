"""What every request handler of the page shares: the services, the signed-in sessions,
the templates, and how the page answers a refusal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.templating import Jinja2Templates

from meterline.web.services import PortalServices
from meterline.web.sessions import PortalSessions

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


class SignInRequired(Exception):
    """No session, or one that is unknown (a forged or stale cookie) or ended."""


class OtherAccount(Exception):
    """The request names an account that is not the signed-in one."""


class FormRefused(Exception):
    """A POST without this session's CSRF token."""


@dataclass
class Portal:
    services: PortalServices
    sessions: PortalSessions
    secure_cookies: bool = True
    """Cookies with the Secure flag (always, except when the page serves plain HTTP)."""


def portal_of(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal
