-- Each outbox row names its lane (the LANE of its event type) so that one relay per lane publishes
-- it: a backlog of bulk rows never stands in front of a step command or a step's progress.
ALTER TABLE outbox ADD COLUMN lane text CHECK (lane IN ('control', 'bulk'));

-- Rows written before this migration: the lane of their topic (shared/topics.py: the streams and
-- the domains' ".bulk." topics are bulk), else of their type (the types whose LANE was bulk when
-- this migration was written), else control.
UPDATE outbox SET lane = CASE
    WHEN topic IN ('dcostack.metering.samples', 'dcostack.usage', 'dcostack.assets',
                   'dcostack.monitor.alarms', 'dcostack.logs')
      OR topic LIKE 'dcostack.%.bulk.commands'
      OR topic LIKE 'dcostack.%.bulk.events'
      OR type IN ('io.dcostack.platform.probe.run.v1', 'io.dcostack.platform.probe.answered.v1')
    THEN 'bulk'
    ELSE 'control'
END;

-- No default: every writer (shared.bus.write_outbox) must say which lane a row is on.
ALTER TABLE outbox ALTER COLUMN lane SET NOT NULL;

-- Each lane's relay reads its own rows in id order without walking past the other lane's.
CREATE INDEX outbox_lane_id ON outbox (lane, id);
