"""Mint an access token the way a Django site with djangorestframework-simplejwt does.

For trying EXTERNAL_JWT_SECRET without a Django project at hand. Needs the
`django-test` extra (pip install -e '.[django-test]'):

    DJANGO_SECRET_KEY=... python scripts/mint_django_token.py 42

prints a simplejwt access token for Django user 42, signed with that key.
"""

import os
import sys


def main() -> None:
    if len(sys.argv) != 2 or "DJANGO_SECRET_KEY" not in os.environ:
        sys.exit("usage: DJANGO_SECRET_KEY=<key> python scripts/mint_django_token.py USER_ID")
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=os.environ["DJANGO_SECRET_KEY"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.auth.models import User
    from rest_framework_simplejwt.tokens import AccessToken

    user_id = sys.argv[1]
    user = User(id=int(user_id) if user_id.isdecimal() else user_id, username=f"user{user_id}")
    print(AccessToken.for_user(user))  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()
