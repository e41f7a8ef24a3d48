-- duckdb-ft data preparation: look at the data before training (ESTIMATE), then train on a cleaned snapshot.
-- A support table with duplicates, a contradictory answer, personal data and an over-long row.
--
--   duckdb-ft prepare.duckdb < sql/prepare.sql
--
-- Run it on a new database file (the model name support_bot must be free). A minute or two on a laptop CPU.

-- 1. Training data with the usual problems.
CREATE OR REPLACE TABLE tickets AS SELECT * FROM (VALUES
    (1, 'How do I reset my password?', 'Click "Forgot password" on the sign-in page and follow the e-mail.'),
    (2, 'How do I reset my password?', 'Click "Forgot password" on the sign-in page and follow the e-mail.'),
    (3, 'How do I reset my password ?', 'Use the link in the sign-in page.'),
    (4, 'Can I get a refund?', 'Yes, within 30 days of purchase.'),
    (5, 'Can I get a refund?', 'No, all sales are final.'),
    (6, 'My card 4111 1111 1111 1111 was charged twice', 'We refunded the second charge to your card.'),
    (7, 'Please e-mail the invoice to jane.doe@example.com', 'Done: the invoice is on its way to you.'),
    (8, 'Where do I change my address?', 'In Settings, then Profile, then Address.'),
    (9, 'Do you deliver on Sundays?', 'No, we deliver Monday to Saturday.'),
    (10, 'Summarize our terms of service.', repeat('The customer agrees to the terms. ', 120)),
    (11, 'Which browsers do you support?', 'The latest two versions of Chrome, Firefox, Safari and Edge.'),
    (12, NULL, 'An answer without a question.')
) AS t(id, question, answer);

-- 2. ESTIMATE: CREATE's checks and snapshot, no job. The report is JSON; here, a few of its numbers.
SET VARIABLE report = (
    SELECT finetune('ESTIMATE', 'smollm2-135m',
                    'SELECT question AS prompt, answer AS completion FROM tickets ORDER BY id',
                    NULL, '{"max_seq_length": 256}')::JSON);
SELECT getvariable('report')->>'$.rows.returned.training_query' AS returned,
       getvariable('report')->>'$.rows.skipped' AS skipped,
       getvariable('report')->>'$.duplicates.exact_duplicate_rows' AS exact_duplicates,
       getvariable('report')->>'$.duplicates.conflicting_prompts' AS conflicting_prompts,
       getvariable('report')->>'$.duplicates.near_duplicate_rows' AS near_duplicates,
       getvariable('report')->>'$.tokens.truncated_rows' AS truncated,
       getvariable('report')->>'$.cost.trained_tokens' AS trained_tokens;

-- Personal data found, by kind, with the rows (numbered in the query's order).
SELECT key AS kind, value->>'values' AS n, value->'training_rows' AS rows
FROM json_each(getvariable('report')->'personal_data');

-- Every warning comes with its fix.
SELECT w->>'finding' AS finding, w->>'fix' AS fix
FROM (SELECT unnest(from_json(getvariable('report')->'warnings', '["JSON"]')) AS w);

-- 3. The findings row by row.
SELECT row, finding, "column", other_row, detail
FROM finetune_data_report('smollm2-135m',
                          'SELECT question AS prompt, answer AS completion FROM tickets ORDER BY id',
                          NULL, '{"max_seq_length": 256}')
ORDER BY row, finding;

-- 4. CREATE with cleaning: drop exact and near duplicates and contradictory rows, mask personal data.
--    Only the job's snapshot is cleaned: the tickets table stays as it is.
SET VARIABLE job_id = (
    SELECT finetune('CREATE', 'support_bot', 'smollm2-135m',
                    'SELECT question AS prompt, answer AS completion FROM tickets ORDER BY id', NULL,
                    '{"max_epochs": 1, "max_seq_length": 256, "dedupe": "near", "drop_conflicting": true, "pii": "mask"}'));
SELECT finetune('WAIT', getvariable('job_id'), 600) AS status;

-- 5. DESCRIBE says what cleaning did; the snapshot holds placeholders, the table the original text.
.mode line
SELECT status, train_rows, skipped_rows, trained_tokens, cleaning
FROM finetune('DESCRIBE', getvariable('job_id'));
.mode box
SELECT prompt FROM duckdb_ft.job_rows WHERE job_id = getvariable('job_id') AND prompt LIKE '%<%' ORDER BY idx;
SELECT count(*) AS tickets_rows FROM tickets;
