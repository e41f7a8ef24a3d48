{#- duckdb-ft's own statements (GRANT ... ON MODEL, DROP MODEL, SHOW MODELS, ...) as SQL that dbt can run, for
    hooks and run-operation:  post-hook: "{{ duckdb_ft.statement('GRANT USAGE ON MODEL shop_bot TO ROLE analyst') }}" -#}
{% macro statement(text) -%}
SELECT ft_execute({{ duckdb_ft.literal(text) }})
{%- endmacro %}

{#- A SQL string literal of any text. -#}
{% macro literal(text) -%}
'{{ text | string | replace("'", "''") }}'
{%- endmacro %}
