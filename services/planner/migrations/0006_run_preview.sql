-- The preview an apply was started from (checked current at start; null when started without one).
ALTER TABLE runs ADD COLUMN preview_id uuid;
