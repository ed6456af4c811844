-- A private deployment's reserved hours: its own price may charge `per_hour` for every
-- started hour of its reserved life (its upstream's `reserved_from`), used or not. Each
-- hour is one row with the top-ups and notes (`kind = 'reservation'`, a negative amount,
-- `note` the deployment, `created_at` the hour's start), charged once per deployment and
-- hour by its idempotency key, so balances and holds count it like any charge.
ALTER TABLE price_versions ADD COLUMN per_hour TEXT NOT NULL DEFAULT '0';
