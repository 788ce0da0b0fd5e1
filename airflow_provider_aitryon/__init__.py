"""Apache Airflow provider for Alibaba Cloud DashScope AI virtual try-on (OutfitAnyone)."""

from __future__ import annotations

__version__ = "0.1.0"
