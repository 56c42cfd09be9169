-- The Keystone trust a run acts through (null under noauth, and once the trust was deleted after the run
-- ended); trusts a resume replaced wait in retired_trusts until they are deleted in Keystone.
ALTER TABLE runs ADD COLUMN trust_id text;
CREATE TABLE retired_trusts (
    trust_id text PRIMARY KEY,
    retired_at timestamptz NOT NULL DEFAULT now()
);
