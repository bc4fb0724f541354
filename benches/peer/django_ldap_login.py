"""The peer tool for benches/benches/ldap_login.rs: django-auth-ldap logins at c=1.

Run by the Rust harness (it sets the variables below and reads the one JSON line this prints),
or by hand with Debian's python3-django-auth-ldap, python3-ldap and python3-django installed:

    RALPH_TEST_LDAP_URL=... RALPH_TEST_LDAP_BASE=... RALPH_TEST_LDAP_BIND_DN=... \
    RALPH_TEST_LDAP_BIND_PASSWORD=... PEER_SECS=5 PEER_CACHE_TTL=0 /usr/bin/python3 django_ldap_login.py

The same directory, user filter, nested group search, flags and attribute map as the Rust
chain's bench config, each tool as it works by default: django-auth-ldap opens a new
connection per login and its NestedGroupOfNamesType search fetches whole group entries (member
lists included); users are mirrored into a fresh SQLite file with Django's own settings for it
(rollback journal, synchronous=FULL; the Rust store uses WAL, synchronous=NORMAL). Users cycle
over bulk00000..bulk00999 from an empty database, so the first pass creates them.
PEER_CACHE_TTL is AUTH_LDAP_CACHE_TIMEOUT (0: off; on, django-auth-ldap caches the user's DN
and groups in a local-memory cache). Runs until PEER_SECS have passed and PEER_MIN_LOGINS
logins are done.
"""

import json
import logging
import os
import sys
import tempfile
import time

import django
from django.conf import settings

USERS = int(os.environ.get("PEER_USERS", "1000"))
SECS = float(os.environ.get("PEER_SECS", "5"))
MIN_LOGINS = int(os.environ.get("PEER_MIN_LOGINS", str(2 * USERS)))
CACHE_TTL = int(os.environ.get("PEER_CACHE_TTL", "0"))
URL = os.environ["RALPH_TEST_LDAP_URL"]
BASE = os.environ["RALPH_TEST_LDAP_BASE"]


def configure(db_path):
    import ldap
    from django_auth_ldap.config import LDAPSearch, NestedGroupOfNamesType

    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db_path}},
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
        AUTHENTICATION_BACKENDS=["django_auth_ldap.backend.LDAPBackend"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        AUTH_LDAP_SERVER_URI=URL,
        AUTH_LDAP_BIND_DN=os.environ["RALPH_TEST_LDAP_BIND_DN"],
        AUTH_LDAP_BIND_PASSWORD=os.environ["RALPH_TEST_LDAP_BIND_PASSWORD"],
        AUTH_LDAP_USER_SEARCH=LDAPSearch(
            BASE,
            ldap.SCOPE_SUBTREE,
            f"(&(sAMAccountName=%(user)s)(memberOf=cn=ralph-users,ou=groups,{BASE}))",
        ),
        AUTH_LDAP_GROUP_SEARCH=LDAPSearch(BASE, ldap.SCOPE_SUBTREE, "(objectClass=groupOfNames)"),
        AUTH_LDAP_GROUP_TYPE=NestedGroupOfNamesType(),
        AUTH_LDAP_MIRROR_GROUPS=True,
        AUTH_LDAP_ALWAYS_UPDATE_USER=True,
        AUTH_LDAP_CACHE_TIMEOUT=CACHE_TTL,
        AUTH_LDAP_USER_ATTR_MAP={"first_name": "givenName", "last_name": "sn", "email": "mail"},
        AUTH_LDAP_USER_FLAGS_BY_GROUP={
            "is_active": f"cn=_gr_ralph,ou=groups,{BASE}",
            "is_staff": f"cn=_gr_ralph_staff,ou=groups,{BASE}",
        },
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


class Keep(logging.Handler):
    """Keeps django-auth-ldap's warnings (LDAP errors), so a failed login can say why."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.last = None

    def emit(self, record):
        self.last = record.getMessage()


def pct(sorted_lat, p):
    if not sorted_lat:
        return 0.0
    return sorted_lat[min(int(len(sorted_lat) * p), len(sorted_lat) - 1)]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        configure(os.path.join(tmp, "peer.sqlite3"))
        from django.contrib.auth import authenticate

        keep = Keep()
        logging.getLogger("django_auth_ldap").addHandler(keep)

        cold, warm, errors = [], [], []
        failed = 0
        n = 0
        started = time.perf_counter()
        cold_done = None
        while n < MIN_LOGINS or time.perf_counter() - started < SECS:
            name = f"bulk{n % USERS:05d}"
            s = time.perf_counter()
            try:
                user = authenticate(None, username=name, password=f"pw-{name}")
            except Exception as e:  # counted, never hidden
                user = None
                if len(errors) < 5:
                    errors.append(f"{name}: {e!r}")
            e = time.perf_counter()
            if user is None or not user.is_active:
                failed += 1
                if len(errors) < 5:
                    why = keep.last or "no warning logged (AuthenticationFailed: not found or bad password)"
                    errors.append(f"{name}: {'inactive' if user else 'not authenticated'}: {why}")
            keep.last = None
            (cold if n < USERS else warm).append(e - s)
            n += 1
            if n == USERS:
                cold_done = e
        ended = time.perf_counter()
        both = sorted(cold + warm)
        cold.sort()
        warm.sort()
        from django.contrib.auth.models import Group, User

        print(
            json.dumps(
                {
                    "logins": n,
                    "secs": ended - started,
                    "p50": pct(both, 0.5),
                    "p99": pct(both, 0.99),
                    "cold_secs": (cold_done or ended) - started,
                    "cold": len(cold),
                    "cold_p50": pct(cold, 0.5),
                    "cold_p99": pct(cold, 0.99),
                    "warm": len(warm),
                    "warm_secs": ended - (cold_done or ended),
                    "warm_p50": pct(warm, 0.5),
                    "warm_p99": pct(warm, 0.99),
                    "failed": failed,
                    "errors": errors,
                    "stored_users": User.objects.count(),
                    "stored_groups": Group.objects.count(),
                    "memberships": User.groups.through.objects.count(),
                    "versions": f"django {django.get_version()}, django-auth-ldap "
                    + __import__("django_auth_ldap").version,
                }
            )
        )


if __name__ == "__main__":
    sys.exit(main())
