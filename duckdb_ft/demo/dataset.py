"""The demo's data: a small shop (customers, products, orders) and text-to-SQL pairs over it, all made by code.

Everything is deterministic: the same tables, the same pairs and the same split on every machine. The pairs come
from templates, each with several phrasings and many values; the held-out pairs use a phrasing that no training
pair uses, or a value that the template never saw in training, so the score measures more than recall.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable

SEED = 20240611

CITIES = ["Lyon", "Porto", "Oslo", "Austin", "Osaka", "Dublin", "Cairo", "Lima"]
FIRST = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kenji", "Lena",
         "Marco", "Nadia", "Omar", "Paula", "Quentin", "Rosa", "Sven", "Tara"]
LAST = ["Silva", "Berg", "Moreau", "Kim", "Novak", "Haddad", "Costa", "Lund", "Tanaka", "Murphy"]
CATALOG = {  # category -> product names (prices are drawn below, distinct within a category)
    "books": ["Atlas", "Cookbook", "Novel", "Poetry Book", "Travel Guide", "Comic"],
    "garden": ["Rake", "Shovel", "Watering Can", "Hose", "Planter", "Seed Kit"],
    "kitchen": ["Kettle", "Toaster", "Blender", "Frying Pan", "Knife Set", "Teapot"],
    "toys": ["Puzzle", "Kite", "Robot", "Yo-yo", "Board Game", "Teddy Bear"],
    "sports": ["Football", "Yoga Mat", "Tennis Racket", "Helmet", "Jump Rope", "Dumbbell"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

#: What the model is told about the tables: short, so that training and generation stay cheap on a CPU.
SCHEMA_TEXT = ("customers(id, name, city, joined DATE)\n"
               "products(id, name, category, price)\n"
               "orders(id, customer_id, product_id, quantity, ordered_on DATE)")


def prompt_for(question: str) -> str:
    """The prompt of one pair: the schema, the question, and what to answer with."""
    return f"Tables:\n{SCHEMA_TEXT}\nQuestion: {question}\nAnswer with one DuckDB SQL query."


# ------------------------------------------------------------------------------------------------------ tables


@dataclass
class Shop:
    customers: list[tuple[int, str, str, date]]
    products: list[tuple[int, str, str, float]]
    orders: list[tuple[int, int, int, int, date]]


def make_shop(seed: int = SEED) -> Shop:
    """60 customers in 8 cities, 30 products in 5 categories, 600 orders over 2023 and 2024."""
    rng = random.Random(seed)
    names = [f"{f} {l}" for f in FIRST for l in LAST]
    rng.shuffle(names)
    customers = []
    for i, name in enumerate(names[:60], start=1):
        joined = date(2019, 1, 1) + timedelta(days=rng.randrange(6 * 365))
        customers.append((i, name, CITIES[rng.randrange(len(CITIES))] if i > len(CITIES) else CITIES[i - 1], joined))
    products = []
    for category, items in CATALOG.items():
        prices = rng.sample(range(5, 200), len(items))
        for item, price in zip(items, prices):
            products.append((len(products) + 1, item, category, float(price) - 0.01))
    orders = []
    for i in range(1, 601):
        day = date(2023, 1, 1) + timedelta(days=rng.randrange(731))
        orders.append((i, rng.randrange(1, len(customers) + 1), rng.randrange(1, len(products) + 1),
                       rng.choice([1, 1, 1, 2, 2, 3, 4, 5]), day))
    return Shop(customers, products, orders)


def create_tables(con: Any, shop: Shop | None = None) -> None:
    """(Re)create the shop's tables on a DuckDB connection."""
    shop = shop or make_shop()
    con.execute("CREATE OR REPLACE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR, city VARCHAR, joined DATE)")
    con.execute("CREATE OR REPLACE TABLE products "
                "(id INTEGER PRIMARY KEY, name VARCHAR, category VARCHAR, price DECIMAL(8, 2))")
    con.execute("CREATE OR REPLACE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, "
                "quantity INTEGER, ordered_on DATE)")
    con.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", shop.customers)
    con.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", shop.products)
    con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", shop.orders)


# ------------------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Template:
    """One kind of question: phrasings (the last one is held out), its SQL, and where its values come from."""

    name: str
    phrasings: tuple[str, ...]
    sql: str
    values: Callable[[Shop], list[dict[str, Any]]]
    train: int = 12
    """Training pairs wanted (fewer when the phrasings and values do not make that many): joins need more."""


def _each(key: str, items: list[Any]) -> Callable[[Shop], list[dict[str, Any]]]:
    return lambda shop: [{key: v} for v in items]


_J_OP = "FROM orders o JOIN products p ON o.product_id = p.id"
_J_OC = "FROM orders o JOIN customers c ON o.customer_id = c.id"
_cities = _each("city", CITIES)
_categories = _each("category", list(CATALOG))
_prices = _each("price", [10, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150])
_products = lambda shop: [{"product": p[1]} for p in shop.products]  # noqa: E731
_customers = lambda shop: [{"customer": c[1]} for c in shop.customers]  # noqa: E731
_nothing = lambda shop: [{}]  # noqa: E731

TEMPLATES = [
    Template("customers_in_city", (
        "How many customers live in {city}?", "Count the customers from {city}.",
        "What is the number of customers in {city}?", "How many of our customers are based in {city}?",
        "Tell me how many customers we have in {city}."),
        "SELECT count(*) FROM customers WHERE city = '{city}'", _cities),
    Template("names_in_city", (
        "List the names of customers in {city}.", "Which customers live in {city}?",
        "Show the customers from {city}.", "Who are our customers in {city}?",
        "Give me the names of all customers based in {city}."),
        "SELECT name FROM customers WHERE city = '{city}'", _cities),
    Template("city_of_customer", (
        "Where does {customer} live?", "Which city is {customer} from?", "What city does {customer} live in?",
        "In which city is the customer {customer}?"),
        "SELECT city FROM customers WHERE name = '{customer}'", _customers, train=14),
    Template("joined_in_year", (
        "Which customers joined in {year}?", "List the customers who signed up in {year}.",
        "Show customers that joined during {year}.", "Name the customers whose join date is in {year}."),
        "SELECT name FROM customers WHERE year(joined) = {year}", _each("year", list(range(2019, 2025)))),
    Template("products_in_category", (
        "List the products in the {category} category.", "Which products are in {category}?",
        "Show all {category} products.", "What do we sell in {category}?",
        "Name every product of the category {category}."),
        "SELECT name FROM products WHERE category = '{category}'", _categories),
    Template("cheaper_than", (
        "Which products cost less than {price} dollars?", "List the products under ${price}.",
        "Show products with a price below {price}.", "What can I buy for less than {price} dollars?"),
        "SELECT name FROM products WHERE price < {price}", _prices),
    Template("pricier_than", (
        "Which products cost more than {price} dollars?", "List the products over ${price}.",
        "Show products with a price above {price}.", "Name the products that are more expensive than {price} dollars."),
        "SELECT name FROM products WHERE price > {price}", _prices),
    Template("price_of", (
        "What does the {product} cost?", "How much is the {product}?", "What is the price of the {product}?",
        "Tell me the price of {product}."),
        "SELECT price FROM products WHERE name = '{product}'", _products, train=14),
    Template("average_price", (
        "What is the average price of {category} products?", "Average price in the {category} category?",
        "How much does a {category} product cost on average?", "Compute the mean price of products in {category}."),
        "SELECT avg(price) FROM products WHERE category = '{category}'", _categories),
    Template("most_expensive", (
        "What is the most expensive {category} product?", "Which {category} product has the highest price?",
        "Find the {category} product with the top price.", "Name the priciest product in {category}."),
        "SELECT name FROM products WHERE category = '{category}' ORDER BY price DESC LIMIT 1", _categories),
    Template("cheapest", (
        "What is the cheapest {category} product?", "Which {category} product has the lowest price?",
        "Find the least expensive product in {category}.", "Name the lowest-priced {category} item."),
        "SELECT name FROM products WHERE category = '{category}' ORDER BY price LIMIT 1", _categories),
    Template("products_per_category", (
        "How many products are there in each category?", "Count the products per category.",
        "Number of products by category?", "For every category, how many products do we have?"),
        "SELECT category, count(*) FROM products GROUP BY category", _nothing),
    Template("customers_per_city", (
        "How many customers are there in each city?", "Count the customers per city.",
        "Number of customers by city?", "For each city, how many customers live there?"),
        "SELECT city, count(*) FROM customers GROUP BY city", _nothing),
    Template("orders_in_month", (
        "How many orders were placed in {month} {year}?", "Count the orders from {month} {year}.",
        "Number of orders in {month} {year}?", "How many orders did we get during {month} {year}?"),
        "SELECT count(*) FROM orders WHERE year(ordered_on) = {year} AND month(ordered_on) = {m}",
        lambda shop: [{"month": MONTHS[m - 1], "m": m, "year": y} for y in (2023, 2024) for m in range(1, 13)],
        train=14),
    Template("big_orders", (
        "How many orders have a quantity of at least {n}?", "Count the orders with {n} or more units.",
        "Number of orders where the quantity is at least {n}?", "How many orders contain {n} units or more?"),
        "SELECT count(*) FROM orders WHERE quantity >= {n}", _each("n", [2, 3, 4, 5])),
    Template("units_sold", (
        "How many units of {product} have been sold?", "What is the total quantity ordered of {product}?",
        "How many {product} items did we sell?", "Give the number of units sold of {product}."),
        f"SELECT sum(o.quantity) {_J_OP} WHERE p.name = '{{product}}'", _products, train=24),
    Template("orders_of_customer", (
        "How many orders has {customer} placed?", "Count the orders of {customer}.",
        "What is the number of orders made by {customer}?", "How many times has {customer} ordered?"),
        f"SELECT count(*) {_J_OC} WHERE c.name = '{{customer}}'", _customers, train=24),
    Template("revenue_of_category", (
        "What is the total revenue from {category} products?", "How much money did {category} products bring in?",
        "Total sales amount of the {category} category?", "Compute the revenue of {category}."),
        f"SELECT sum(o.quantity * p.price) {_J_OP} WHERE p.category = '{{category}}'", _categories),
    Template("spent_by_customer", (
        "How much has {customer} spent in total?", "What is the total amount spent by {customer}?",
        "How much money has {customer} spent with us?", "Sum up what {customer} paid for all orders."),
        f"SELECT sum(o.quantity * p.price) {_J_OP} JOIN customers c ON o.customer_id = c.id "
        f"WHERE c.name = '{{customer}}'", _customers, train=24),
    Template("buyers_of_product", (
        "Which customers bought the {product}?", "Who ordered the {product}?",
        "List the customers who purchased {product}.", "Name everyone who has bought a {product}."),
        f"SELECT DISTINCT c.name {_J_OC} JOIN products p ON o.product_id = p.id WHERE p.name = '{{product}}'",
        _products, train=24),
]


@dataclass(frozen=True)
class Pair:
    template: str
    question: str
    sql: str
    phrasing: int  # index in its template's phrasings
    unseen: str = ""  # held-out pairs: 'phrasing' or 'value' (what the training pairs never showed)

    @property
    def prompt(self) -> str:
        return prompt_for(self.question)


def make_pairs(shop: Shop | None = None, *, seed: int = SEED) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs), deterministic.

    Per template: up to ``Template.train`` training pairs from the first phrasings and some of the values;
    held out: one pair with the last phrasing (never trained on), and, where the template has values to spare,
    one or two pairs with a trained phrasing and a value the template never saw in training.
    """
    shop = shop or make_shop(seed)
    rng = random.Random(seed)
    train: list[Pair] = []
    test: list[Pair] = []
    for t in TEMPLATES:
        values = t.values(shop)
        rng.shuffle(values)
        trained = range(len(t.phrasings) - 1)  # the last phrasing is for held-out pairs only
        fresh: list[dict[str, Any]] = []
        if len(values) > 3:  # keep 1 or 2 values away from training, for held-out pairs
            spare = 2 if len(values) >= 12 else 1
            fresh, values = values[:spare], values[spare:]
        combos = [(k, v) for v in values for k in trained]
        rng.shuffle(combos)
        train.extend(Pair(t.name, t.phrasings[k].format(**v), t.sql.format(**v), k)
                     for k, v in combos[:t.train])
        held, last = rng.choice(values), len(t.phrasings) - 1
        test.append(Pair(t.name, t.phrasings[last].format(**held), t.sql.format(**held), last, "phrasing"))
        for v in fresh:
            k = rng.choice(trained)
            test.append(Pair(t.name, t.phrasings[k].format(**v), t.sql.format(**v), k, "value"))
    rng.shuffle(train)
    return train, test
