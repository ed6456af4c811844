-- Key lifecycle and per-key limits.
-- A key is live while revoked_at is NULL or in the future: rotation schedules the old
-- key's revocation at the end of its grace period. NULL limits mean the configured default;
-- allowed_models NULL means every model, else a JSON array of model names.

ALTER TABLE api_keys ADD COLUMN allowed_models TEXT;
ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
ALTER TABLE api_keys ADD COLUMN tpm INTEGER;
ALTER TABLE api_keys ADD COLUMN rotated_to INTEGER REFERENCES api_keys(id);
