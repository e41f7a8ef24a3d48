-- duckdb-ft privileges walk-through: an administrator, an analyst who may fine-tune in one schema,
-- and a viewer who may only COMPLETE with one model.
-- Run it with:  duckdb-ft privileges.duckdb < sql/privileges.sql
-- (A connection opened without a user is the administrator; `USE ROLE` lets the administrator act as a role,
--  as `duckdb_ft.connect(path, user='alice')` would for a user granted that role.)

-- The administrator's data: a FAQ the analyst may use, and salaries nobody else may see.
CREATE TABLE faq AS SELECT * FROM (VALUES
    ('How do I reset my password?', 'Open Settings, choose Security, then Reset password.'),
    ('How do I export my data?', 'Open Settings, choose Privacy, then Export data.'),
    ('How do I delete my account?', 'Open Settings, choose Account, then Delete account.'),
    ('How do I change my email?', 'Open Settings, choose Account, then Change email.')) t(question, answer);
CREATE TABLE salaries AS SELECT * FROM (VALUES ('alice', 120000), ('bob', 95000)) t(name, salary);
CREATE SCHEMA ml;

-- Roles, and who holds them.
CREATE ROLE analyst;
CREATE ROLE viewer;
GRANT ROLE analyst TO USER alice;
GRANT ROLE viewer TO USER bob;

-- The analyst: read the FAQ, create models in schema ml.
GRANT USAGE ON SCHEMA main TO ROLE analyst;
GRANT SELECT ON TABLE faq TO ROLE analyst;
GRANT USAGE ON SCHEMA ml TO ROLE analyst;
GRANT CREATE MODEL ON SCHEMA ml TO ROLE analyst;
-- The viewer: may enter schema ml; the model itself is granted by its owner below.
GRANT USAGE ON SCHEMA ml TO ROLE viewer;

SHOW ROLES;
SHOW GRANTS TO ROLE analyst;

-- As the analyst: fine-tune a support bot on the FAQ (the analyst's role owns the model).
USE ROLE analyst;
SELECT count(*) AS faq_rows FROM faq;
SET VARIABLE job = (SELECT finetune('CREATE', 'ml.support_bot', 'smollm2-135m',
    'SELECT question AS prompt, answer AS completion FROM faq', NULL,
    '{"max_epochs": 2, "learning_rate": 0.001, "batch_size": 4}'));
SELECT finetune('WAIT', getvariable('job'), 600) AS status;
SELECT status, model, train_rows FROM finetune('DESCRIBE', getvariable('job'));
-- The analyst's role owns the model, so it may share it with the viewer.
GRANT USAGE ON MODEL ml.support_bot TO ROLE viewer;
SHOW GRANTS ON MODEL ml.support_bot;

-- As the viewer: COMPLETE works with the granted model; the salaries stay out of reach
-- (try_complete returns NULL where complete would say which privilege is missing).
USE ROLE viewer;
SHOW MODELS IN SCHEMA ml;
SELECT try_complete('ml.support_bot', 'How do I export my data?', '{"max_tokens": 24}') IS NOT NULL
    AS viewer_can_complete;

-- Back to the administrator: revoking takes effect on the next call.
USE ROLE admin;
REVOKE USAGE ON MODEL ml.support_bot FROM ROLE viewer;
USE ROLE viewer;
SELECT try_complete('ml.support_bot', 'How do I export my data?', '{"max_tokens": 24}') IS NULL AS revoked;
USE ROLE admin;
SHOW MODELS;
