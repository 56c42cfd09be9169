-- Plan documents. A plan is a name within a project; every change is a new row in plan_versions, and
-- old versions stay readable. project_id is plain text until identity (Keystone) arrives.
CREATE TABLE plans (
    id             uuid        PRIMARY KEY,
    project_id     text        NOT NULL,
    name           text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    latest_version integer     NOT NULL,
    deleted_at     timestamptz
);
-- A deleted plan frees its name: uniqueness holds only among plans that are not deleted.
CREATE UNIQUE INDEX plans_project_name ON plans (project_id, name) WHERE deleted_at IS NULL;
CREATE INDEX plans_project_created ON plans (project_id, created_at DESC) WHERE deleted_at IS NULL;

CREATE TABLE plan_versions (
    plan_id    uuid        NOT NULL REFERENCES plans (id),
    version    integer     NOT NULL CHECK (version >= 1),
    document   jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    PRIMARY KEY (plan_id, version)
);
