-- Platform self-check: every RunProbeV1 command this service handled, in the order it handled them.
-- No unique constraint on purpose: tests count rows to prove each command took effect exactly once.
CREATE TABLE probe_answers (
    id          bigserial PRIMARY KEY,
    probe_id    uuid        NOT NULL,
    seq         integer     NOT NULL,
    event_id    text        NOT NULL,
    answered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX probe_answers_probe ON probe_answers (probe_id, seq);
