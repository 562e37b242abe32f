"""A small app the tests and the demo migrate under traffic."""

from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.CharField(max_length=200, default="")

    class Meta:
        app_label = "shop"


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, null=True)
    reference = models.CharField(max_length=50)
    amount = models.IntegerField(default=0)
    note = models.TextField(null=True)

    class Meta:
        app_label = "shop"
