-- Runs of a plan version (apply or destroy) and the persisted state machine of every step.
-- A restarted planner carries on from these rows: nothing about a run lives only in memory.
CREATE TABLE runs (
    id           uuid        PRIMARY KEY,
    plan_id      uuid        NOT NULL REFERENCES plans (id),
    plan_version integer     NOT NULL,
    project_id   text        NOT NULL,
    action       text        NOT NULL CHECK (action IN ('apply', 'destroy')),
    state        text        NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    max_parallel integer     NOT NULL CHECK (max_parallel >= 1),
    message      text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX runs_plan ON runs (plan_id, created_at DESC);

CREATE TABLE run_steps (
    run_id      uuid        NOT NULL REFERENCES runs (id),
    key         text        NOT NULL,
    seq         integer     NOT NULL,
    service     text        NOT NULL,
    kind        text        NOT NULL,
    path        text        NOT NULL,
    params      jsonb       NOT NULL,
    after_keys  text[]      NOT NULL,
    state       text        NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'dispatched', 'running', 'succeeded', 'failed', 'skipped')),
    dispatch_id uuid,
    message     text        NOT NULL DEFAULT '',
    outputs     jsonb       NOT NULL DEFAULT '{}',
    error       jsonb,
    deadline    timestamptz,
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, key)
);
CREATE INDEX run_steps_inflight ON run_steps (deadline) WHERE state IN ('dispatched', 'running');
