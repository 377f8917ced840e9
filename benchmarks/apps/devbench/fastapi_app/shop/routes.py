"""The shop's routes (10 on the router, plus ``GET /`` in ``main``)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Query

from .models import Category, Customer, Item, ItemCreate, Order, OrderLine

router = APIRouter()

ITEMS: dict[int, Item] = {
    1: Item(id=1, name="A book", price=12.5, tags=["paper"]),
    2: Item(id=2, name="A game", price=40.0, category=Category.games),
}
CUSTOMERS: dict[int, Customer] = {1: Customer(id=1, email="a@example.com", name="A", created=datetime.now(UTC))}
ORDERS: dict[int, Order] = {}


@router.get("/items", response_model=list[Item])
async def list_items(category: Category | None = None, limit: int = Query(20, le=100)) -> list[Item]:
    items = [i for i in ITEMS.values() if category is None or i.category == category]
    return items[:limit]


@router.get("/items/{item_id}", response_model=Item)
async def get_item(item_id: int) -> Item:
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    return ITEMS[item_id]


@router.post("/items", response_model=Item, status_code=201)
async def create_item(body: ItemCreate) -> Item:
    item = Item(id=max(ITEMS, default=0) + 1, **body.model_dump())
    ITEMS[item.id] = item
    return item


@router.put("/items/{item_id}", response_model=Item)
async def replace_item(item_id: int, body: ItemCreate) -> Item:
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    ITEMS[item_id] = Item(id=item_id, **body.model_dump())
    return ITEMS[item_id]


@router.delete("/items/{item_id}", status_code=204)
async def delete_item(item_id: int) -> None:
    ITEMS.pop(item_id, None)


@router.get("/customers", response_model=list[Customer])
async def list_customers() -> list[Customer]:
    return list(CUSTOMERS.values())


@router.get("/customers/{customer_id}", response_model=Customer)
async def get_customer(customer_id: int) -> Customer:
    if customer_id not in CUSTOMERS:
        raise HTTPException(404, "no such customer")
    return CUSTOMERS[customer_id]


@router.post("/orders", response_model=Order, status_code=201)
async def create_order(customer_id: int, lines: list[OrderLine]) -> Order:
    if customer_id not in CUSTOMERS:
        raise HTTPException(404, "no such customer")
    order = Order(id=len(ORDERS) + 1, customer_id=customer_id, lines=lines)
    ORDERS[order.id] = order
    return order


@router.get("/orders/{order_id}", response_model=Order)
async def get_order(order_id: int) -> Order:
    if order_id not in ORDERS:
        raise HTTPException(404, "no such order")
    return ORDERS[order_id]


@router.get("/categories", response_model=list[Category])
async def list_categories() -> list[Category]:
    return list(Category)
