-- Plan steps a domain service has accepted and works on (compute, network, storage use it).
-- A command's dispatch_id makes a redelivered command a no-op; a lease lets a restarted service
-- (or another replica) pick up what a killed one was doing.
CREATE TABLE operations (
    id            bigserial PRIMARY KEY,
    dispatch_id   uuid        NOT NULL UNIQUE,
    action        text        NOT NULL CHECK (action IN ('apply', 'destroy')),
    run_id        uuid        NOT NULL,
    plan_id       uuid        NOT NULL,
    step_key      text        NOT NULL,
    kind          text        NOT NULL,
    path          text        NOT NULL,
    params        jsonb       NOT NULL,
    deadline      timestamptz NOT NULL,
    state         text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    tries         integer     NOT NULL DEFAULT 0,
    not_before    timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    last_message  text        NOT NULL DEFAULT '',
    correlation_id text,
    project_id    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX operations_ready ON operations (not_before) WHERE state <> 'done';

CREATE FUNCTION operations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_operations', '');
    RETURN NULL;
END $$;

CREATE TRIGGER operations_notify AFTER INSERT ON operations
    FOR EACH STATEMENT EXECUTE FUNCTION operations_notify();
