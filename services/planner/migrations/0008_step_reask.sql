-- A step whose progress never arrives (the broker lost it) is asked again instead of waiting out the step
-- timeout: heard_at is when the planner last heard from the step's service or asked it (dispatch, re-ask),
-- reasks how many times the same command (same dispatch id) was sent again.
ALTER TABLE run_steps ADD COLUMN heard_at timestamptz;
ALTER TABLE run_steps ADD COLUMN reasks integer NOT NULL DEFAULT 0;
UPDATE run_steps SET heard_at = updated_at WHERE state IN ('dispatched', 'running');
