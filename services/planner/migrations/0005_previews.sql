-- Previews: what applying a plan version would do in the cloud (the diff) and whether it can (the checks),
-- as computed at created_at. The fingerprints let a run refuse to start from a preview that no longer holds:
-- plan_fingerprint hashes the version's document, live_fingerprint the live values the checks used
-- (quota, flavors, images, external networks, host capacity, the plan's resources in the cloud).
CREATE TABLE previews (
    id               uuid        PRIMARY KEY,
    plan_id          uuid        NOT NULL REFERENCES plans (id),
    version          integer     NOT NULL,
    project_id       text        NOT NULL,
    ok               boolean     NOT NULL,
    result           jsonb       NOT NULL,
    plan_fingerprint text        NOT NULL,
    live_fingerprint text        NOT NULL,
    live_values      jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (plan_id, version) REFERENCES plan_versions (plan_id, version)
);
CREATE INDEX previews_plan_created ON previews (plan_id, created_at DESC);
