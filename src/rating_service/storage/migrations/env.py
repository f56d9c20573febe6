from alembic import context

from meterline.kernel.db import run_migrations_online
from rating_service.storage.models import VERSION_TABLE, metadata

run_migrations_online(context.config.attributes["connection"], metadata, VERSION_TABLE)
