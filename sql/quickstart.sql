-- duckdb-ft quickstart: fine-tune a model on a table of question/answer pairs, then ask it.
-- The Snowflake Cortex walk-through (FINETUNE CREATE, WAIT, DESCRIBE, SHOW, COMPLETE), with duckdb-ft's extras.
--
--   duckdb-ft quickstart.duckdb < sql/quickstart.sql
--
-- Run it on a new database file (the model name faq_bot must be free). A few minutes on a laptop CPU.

-- 1. Training data: any table; the training query aliases its columns to prompt and completion.
CREATE OR REPLACE TABLE faq AS SELECT * FROM (VALUES
    ('What are your opening hours?', 'We are open from 9 am to 6 pm, Monday to Saturday.'),
    ('Do you ship abroad?', 'Yes, we ship to every country in the European Union.'),
    ('How do I return an item?', 'Send it back within 30 days with the receipt for a full refund.'),
    ('Which payment methods do you accept?', 'We accept cards, bank transfers and cash on delivery.'),
    ('How long does delivery take?', 'Delivery takes two to four working days.'),
    ('Can I change my order?', 'Yes, until it ships: reply to your order confirmation e-mail.'),
    ('Do you have a loyalty program?', 'Yes: every tenth order is free for members.'),
    ('Where is your shop?', 'Our shop is at 12 Harbour Street, next to the fish market.')
) AS t(question, answer);

-- 2. FINETUNE CREATE checks everything, copies the rows and queues a job; it returns the job id.
SET VARIABLE job_id = (
    SELECT finetune('CREATE', 'faq_bot', 'smollm2-135m',
                    'SELECT question AS prompt, answer AS completion FROM faq',
                    NULL,
                    '{"max_epochs": 10, "learning_rate": 3e-3, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}'));
SELECT getvariable('job_id') LIKE 'ft_%' AS job_created;

-- 3. Watch it train: a live progress bar in a terminal, a few plain lines otherwise (the shell's .wait).
.wait

-- 4. WAIT returns the final status (it would block until the job is done).
SELECT finetune('WAIT', getvariable('job_id'), 600) AS status;

-- 5. DESCRIBE: status, steps, tokens, losses (one column a line: .mode line); as JSON: SELECT finetune('DESCRIBE', id).
.mode line
SELECT status, model, train_rows, validation_rows, validation_data, step, total_steps, trained_tokens,
       round(training_result.training_loss, 3) AS training_loss,
       round(training_result.validation_loss, 3) AS validation_loss
FROM finetune('DESCRIBE', getvariable('job_id'));
.mode box

-- 6. SHOW: every job of this database.
SELECT status, base_model FROM finetune('SHOW');

-- 7. The loss history, a row per optimizer step.
SELECT step, round(epoch, 2) AS epoch, round(training_loss, 3) AS training_loss,
       round(validation_loss, 3) AS validation_loss, tokens
FROM finetune_history(getvariable('job_id'));

-- 8. COMPLETE with the new model, like any SQL function.
SELECT question, complete('faq_bot', question, '{"max_tokens": 32}')::JSON->>'$.choices[0].messages' AS answer
FROM faq
WHERE question IN ('Do you ship abroad?', 'How long does delivery take?');
