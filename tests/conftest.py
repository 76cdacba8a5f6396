"""What every test module shares."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest


@pytest.fixture(autouse=True)
def pages_found_by_file(monkeypatch):
    """AppTest.switch_page("app_pages/FILE.py") on a session that has not run yet: run it once
    first (its default page). Before a first run AppTest knows a page only by its file name, and
    app.py gives every page an address from its name (st.Page's url_path: /who-looks-here for
    app_pages/who_looks_here.py), so the switch would silently open the default page instead."""
    switch = AppTest.switch_page

    def switch_page(self: AppTest, page_path: str) -> AppTest:
        if not self._registered_pages:
            self.run()
        return switch(self, page_path)

    monkeypatch.setattr(AppTest, "switch_page", switch_page)
