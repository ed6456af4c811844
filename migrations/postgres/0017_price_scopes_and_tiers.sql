-- Prices narrower than a model × chip: a private deployment's own (`deployment`), an
-- account's own (`account`, its name), and the tiers of a price by the request's billed
-- prompt tokens (more than `prompt_tokens_over`, at most `prompt_tokens_up_to`, NULL for
-- no bound). '' and 0 for every price before. A price is unique per model, chip,
-- deployment, account, tier and effective time.
ALTER TABLE price_versions ADD COLUMN deployment TEXT NOT NULL DEFAULT '';
ALTER TABLE price_versions ADD COLUMN account TEXT NOT NULL DEFAULT '';
ALTER TABLE price_versions ADD COLUMN prompt_tokens_over BIGINT NOT NULL DEFAULT 0;
ALTER TABLE price_versions ADD COLUMN prompt_tokens_up_to BIGINT;
ALTER TABLE price_versions DROP CONSTRAINT price_versions_model_chip_effective_from_key;
ALTER TABLE price_versions ADD CONSTRAINT price_versions_scope_tier_time_key
    UNIQUE (model, chip, deployment, account, prompt_tokens_over, effective_from);
