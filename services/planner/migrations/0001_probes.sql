-- Self-check probes the planner sent, and every answer it received (no unique constraint on purpose:
-- the crash tests count rows to prove each answer took effect exactly once).
CREATE TABLE probes (
    id         uuid        PRIMARY KEY,
    targets    text[]      NOT NULL,
    count      integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE probe_replies (
    id          bigserial   PRIMARY KEY,
    probe_id    uuid        NOT NULL,
    service     text        NOT NULL,
    seq         integer     NOT NULL,
    event_id    text        NOT NULL,
    answered_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX probe_replies_probe ON probe_replies (probe_id, service);
