-- How a finished operation ended, so that a command asked again (same dispatch_id: the planner heard
-- nothing for a while) is answered with the same final StepProgressedV1, without running it twice.
-- NULL while the operation is pending or running.
ALTER TABLE operations
    ADD COLUMN outcome text CHECK (outcome IN ('succeeded', 'failed')),
    ADD COLUMN outputs jsonb,
    ADD COLUMN error   jsonb;
