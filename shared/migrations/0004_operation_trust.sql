-- The Keystone trust a step is executed through (the run's delegation from the user who started it
-- to DCOSTACK's service user). NULL: the service acts with its own clouds.yaml entry (noauth).
ALTER TABLE operations ADD COLUMN trust_id text;
