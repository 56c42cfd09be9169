-- Run lifecycle: what a plan has built (the applied-state ledger), scale by diff, cancel, rollback, resume.

-- The applied-state ledger: one row per step key that exists in the cloud because an apply step of the
-- plan succeeded; removed when a destroy step of it succeeds. Written in the same transaction as the
-- step's result. A later apply diffs its graph against these rows (scale-in removes what is no longer
-- wanted); a rollback removes only the rows its own run created.
CREATE TABLE applied_steps (
    plan_id    uuid        NOT NULL REFERENCES plans (id),
    key        text        NOT NULL,
    service    text        NOT NULL,
    kind       text        NOT NULL,
    path       text        NOT NULL,
    params     jsonb       NOT NULL,
    outputs    jsonb       NOT NULL DEFAULT '{}',
    run_id     uuid        NOT NULL REFERENCES runs (id),  -- the run whose apply created it
    plan_version integer   NOT NULL,                        -- the plan version that run applied
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, key)
);
CREATE INDEX applied_steps_run ON applied_steps (run_id);

-- What runs built before this ledger existed: for every step key, its latest succeeded step decides.
INSERT INTO applied_steps (plan_id, key, service, kind, path, params, outputs, run_id, plan_version, created_at)
SELECT plan_id, key, service, kind, path, params, outputs, run_id, plan_version, finished_at
FROM (
    SELECT DISTINCT ON (r.plan_id, s.key)
           r.plan_id, s.key, s.service, s.kind, s.path, s.params, s.outputs, r.id AS run_id, r.plan_version,
           r.action, coalesce(s.finished_at, s.updated_at) AS finished_at
    FROM run_steps s JOIN runs r ON r.id = s.run_id
    WHERE s.state = 'succeeded'
    ORDER BY r.plan_id, s.key, coalesce(s.finished_at, s.updated_at) DESC
) latest
WHERE action = 'apply';

-- New run states: cancelling → cancelled; rolling_back → rolled_back (or failed when something could
-- not be compensated). A held run ends failed.
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check CHECK (
    state IN ('running', 'cancelling', 'rolling_back', 'succeeded', 'failed', 'cancelled', 'rolled_back'));
ALTER TABLE runs ADD COLUMN on_failure text NOT NULL DEFAULT 'hold' CHECK (on_failure IN ('rollback', 'hold'));
ALTER TABLE runs ADD COLUMN resumed integer NOT NULL DEFAULT 0;  -- how many times it was resumed
CREATE INDEX runs_active ON runs (plan_id) WHERE state IN ('running', 'cancelling', 'rolling_back');

-- Every step says what it does: an apply run also destroys what its version no longer has (scale-in),
-- and a rollback turns the steps the run created into destroy steps (rollback = true).
ALTER TABLE run_steps ADD COLUMN action text NOT NULL DEFAULT 'apply' CHECK (action IN ('apply', 'destroy'));
UPDATE run_steps s SET action = 'destroy' FROM runs r WHERE r.id = s.run_id AND r.action = 'destroy';
ALTER TABLE run_steps ADD COLUMN rollback boolean NOT NULL DEFAULT false;
ALTER TABLE run_steps DROP CONSTRAINT run_steps_state_check;
ALTER TABLE run_steps ADD CONSTRAINT run_steps_state_check CHECK (
    state IN ('pending', 'dispatched', 'running', 'succeeded', 'failed', 'skipped', 'cancelled', 'rolled_back',
              'error'));
CREATE UNIQUE INDEX run_steps_dispatch ON run_steps (dispatch_id) WHERE dispatch_id IS NOT NULL;
