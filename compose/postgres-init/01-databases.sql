-- Runs once, when the postgres container initialises an empty data volume (as the
-- POSTGRES_USER superuser, `meterline`). Each Meterline service owns its own database;
-- the services create their tables themselves (Alembic migrations on start).
CREATE DATABASE meterline_rating OWNER meterline;
CREATE DATABASE meterline_billing OWNER meterline;
CREATE DATABASE meterline_service OWNER meterline;
