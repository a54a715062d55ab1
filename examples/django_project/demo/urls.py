from django.urls import path

from demo import views

urlpatterns = [path("items/<int:item_id>", views.item), path("metrics", views.metrics)]
