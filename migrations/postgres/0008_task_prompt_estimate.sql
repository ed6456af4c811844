-- A task keeps tollgate's count of its prompt, made at submission: a task that ends without
-- its backend reporting usage is billed on it (the submission's body is not kept).
ALTER TABLE tasks ADD COLUMN prompt_estimate BIGINT NOT NULL DEFAULT 0;
