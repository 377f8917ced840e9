"""The shop's 5 pydantic models."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class Category(StrEnum):
    books = "books"
    games = "games"
    tools = "tools"


class Item(BaseModel):
    id: int
    name: str = Field(min_length=1, max_length=80)
    price: float = Field(gt=0)
    category: Category = Category.books
    tags: list[str] = []


class ItemCreate(BaseModel):
    name: str = Field(min_length=1, max_length=80)
    price: float = Field(gt=0)
    category: Category = Category.books
    tags: list[str] = []


class Customer(BaseModel):
    id: int
    email: str
    name: str
    created: datetime


class OrderLine(BaseModel):
    item_id: int
    quantity: int = Field(ge=1, le=100)


class Order(BaseModel):
    id: int
    customer_id: int
    lines: list[OrderLine]
    note: str | None = None

    @property
    def quantity(self) -> int:
        return sum(line.quantity for line in self.lines)
