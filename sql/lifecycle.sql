-- duckdb-ft model lifecycle: train, continue on new rows as a new version, roll back, see the usage.
--
--   duckdb-ft lifecycle.duckdb < sql/lifecycle.sql
--
-- Run it on a new database file (the model name faq_bot must be free). Two short jobs, one after another: a few
-- minutes on a laptop CPU with the default model.

-- 1. The first training data: the shop's FAQ as it was.
CREATE OR REPLACE TABLE faq AS SELECT * FROM (VALUES
    ('What are your opening hours?', 'We are open from 9 am to 6 pm, Monday to Saturday.', DATE '2026-10-01'),
    ('Do you ship abroad?', 'Yes, we ship to every country in the European Union.', DATE '2026-10-01'),
    ('How do I return an item?', 'Send it back within 30 days with the receipt for a full refund.', DATE '2026-10-01'),
    ('Which payment methods do you accept?', 'We accept cards, bank transfers and cash on delivery.', DATE '2026-10-01')
) AS t(question, answer, added_on);

-- 2. Version v1 of faq_bot, trained from the base model.
SELECT finetune('CREATE', 'faq_bot', 'smollm2-135m',
                'SELECT question AS prompt, answer AS completion FROM faq',
                NULL, '{"max_epochs": 3, "learning_rate": 1e-3}') LIKE 'ft_%' AS created_v1;
.wait

-- 3. New rows arrive. Continue faq_bot on them (its base is the fine-tuned model itself) as a new version:
--    the option version adds v2 to the same name; when its job succeeds, v2 is the default.
INSERT INTO faq VALUES
    ('How long does delivery take?', 'Delivery takes two to four working days.', DATE '2026-11-15'),
    ('Do you have a loyalty program?', 'Yes: every tenth order is free for members.', DATE '2026-11-15');
SELECT finetune('CREATE', 'faq_bot', 'faq_bot',
                'SELECT question AS prompt, answer AS completion FROM faq WHERE added_on > DATE ''2026-11-01''',
                NULL, '{"max_epochs": 3, "learning_rate": 1e-3, "version": true}') LIKE 'ft_%' AS created_v2;
.wait

-- 4. The versions: v2 continued v1 (parent_model) and is the default.
SHOW VERSIONS IN MODEL faq_bot;

-- 5. 'faq_bot' means the default version; 'faq_bot@v1' a given one.
SELECT complete('faq_bot', 'How long does delivery take?', '{"max_tokens": 24}')::JSON->>'$.choices[0].messages' AS v2;
SELECT complete('faq_bot@v1', 'Do you ship abroad?', '{"max_tokens": 24}')::JSON->>'$.choices[0].messages' AS v1;

-- 6. Roll back: the bare name means v1 again (DESCRIBE MODEL shows which version it is).
ALTER MODEL faq_bot SET DEFAULT VERSION v1;
DESCRIBE MODEL faq_bot;

-- 7. The usage so far: COMPLETE per model version and role, and each job's trained tokens.
SELECT function_name, model_name, version, role, calls, rows, tokens > 0 AS counted_tokens,
       trained_tokens > 0 AS trained
FROM finetune_usage() ORDER BY function_name, version;

-- 8. A version that is not the default can go; the default cannot (an error that says which to set first).
DROP MODEL faq_bot VERSION v2;
SHOW MODELS;
