-- Each outbox row names its lane (the LANE of its event type) so that one relay per lane publishes
-- it: a backlog of bulk rows never stands in front of a step command or a step's progress.
-- shared.bus.write_outbox fills the column from the event type's LANE.

-- The lane of a row that does not say: that of its topic (shared/topics.py: the streams and the
-- domains' ".bulk." topics are bulk), else of its type (the types whose LANE was bulk when this
-- migration was written), else control.
CREATE FUNCTION outbox_lane(topic text, type text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN topic IN ('dcostack.metering.samples', 'dcostack.usage', 'dcostack.assets',
                       'dcostack.monitor.alarms', 'dcostack.logs')
          OR topic LIKE 'dcostack.%.bulk.commands'
          OR topic LIKE 'dcostack.%.bulk.events'
          OR type IN ('io.dcostack.platform.probe.run.v1', 'io.dcostack.platform.probe.answered.v1')
        THEN 'bulk'
        ELSE 'control'
    END
$$;

ALTER TABLE outbox ADD COLUMN lane text CHECK (lane IN ('control', 'bulk'));
UPDATE outbox SET lane = outbox_lane(topic, type);  -- rows queued before this migration
ALTER TABLE outbox ALTER COLUMN lane SET NOT NULL;

-- A writer that does not name the lane (a replica of the previous release still running during an
-- upgrade) gets its topic's lane rather than a failed transaction. write_outbox always names it, so
-- the function runs only for such writers.
CREATE FUNCTION outbox_fill_lane() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    NEW.lane := outbox_lane(NEW.topic, NEW.type);
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_fill_lane BEFORE INSERT ON outbox
    FOR EACH ROW WHEN (NEW.lane IS NULL) EXECUTE FUNCTION outbox_fill_lane();

-- Each lane's relay reads its own rows in id order without walking past the other lane's.
CREATE INDEX outbox_lane_id ON outbox (lane, id);
