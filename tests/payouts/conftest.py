import importlib

import pytest
from django.apps import apps

_seed = importlib.import_module("payouts.migrations.0002_seed_networks")


@pytest.fixture(autouse=True)
def seeded_networks(request):
    """The networks the data migration seeds. Transactional tests flush every table, so put them back.

    Runs after pytest-django's own autouse fixture has opened database access.
    """
    if request.node.get_closest_marker("django_db") is not None:
        _seed.seed(apps, None)
