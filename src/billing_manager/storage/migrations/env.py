from alembic import context

from billing_manager.storage.models import VERSION_TABLE, metadata
from meterline.kernel.db import run_migrations_online

run_migrations_online(context.config.attributes["connection"], metadata, VERSION_TABLE)
