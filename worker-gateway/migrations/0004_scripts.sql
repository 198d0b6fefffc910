-- A script job's result from the scripting worker (a qiria.sandbox.v1.RunResult, protobuf,
-- base64): exit code, output, artifacts, the limits that fired, durations.
ALTER TABLE jobs ADD COLUMN script_result TEXT NOT NULL DEFAULT '';
