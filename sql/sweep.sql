-- duckdb-ft sweep: try several hyperparameters in one call, rank the runs, use the winner.
--
--   duckdb-ft sweep.duckdb < sql/sweep.sql
--
-- Run it on a new database file (the model names faq_sweep_1 ... faq_sweep_4 must be free). A 2 x 2 sweep: four
-- short jobs, one after another; several minutes on a laptop CPU with the default model.

-- 1. Training data, and a validation set the ranking is decided on.
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
CREATE OR REPLACE TABLE faq_check AS SELECT * FROM (VALUES
    ('When are you open?', 'We are open from 9 am to 6 pm, Monday to Saturday.'),
    ('Do you deliver to other countries?', 'Yes, we ship to every country in the European Union.')
) AS t(question, answer);

-- 2. SWEEP: the options given as lists are tried in every combination (here 2 x 2 = 4 jobs, faq_sweep_1 to _4).
--    Every combination is checked first: one bad value and nothing is created. It returns the sweep id.
SET VARIABLE sweep_id = (
    SELECT finetune('SWEEP', 'faq_sweep', 'smollm2-135m',
                    'SELECT question AS prompt, answer AS completion FROM faq',
                    'SELECT question AS prompt, answer AS completion FROM faq_check',
                    '{"max_epochs": 3, "learning_rate": [1e-3, 3e-3], "lora_r": [8, 16], "lora_dropout": 0.0}'));
SELECT getvariable('sweep_id') LIKE 'sw_%' AS sweep_created;

-- 3. Watch the four jobs (the shell's .wait follows every job this process started).
.wait

-- 4. The ranking: best validation loss first, with what each run tried.
SELECT rank, model, status, swept, round(validation_loss, 4) AS validation_loss, best_step, trained_tokens
FROM finetune_sweep(getvariable('sweep_id'))
ORDER BY rank;

-- 5. The winner answers like any model.
SELECT complete((SELECT model FROM finetune_sweep(getvariable('sweep_id')) WHERE rank = 1),
                'Do you ship abroad?', '{"max_tokens": 24}')::JSON->>'$.choices[0].messages' AS answer;
