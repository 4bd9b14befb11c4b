"""Logs in to the Airflow UI with headless Chromium and waits until every DAG is listed.

Run in Airflow's virtualenv (it holds Selenium), by tests/integration/test_airflow_ui.py::

    python airflow_browser.py URL USER PASSWORD_FILE SCREENSHOT DAG_ID…

Drives Debian's ``chromium`` through its ``chromedriver`` (no browser download). Prints JSON:
the DAG ids seen on the DAG list and the page title. Exits non-zero when a DAG did not show up.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT_S = 180


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def main(url: str, user: str, password_file: str, screenshot: str, dag_ids: list[str]) -> int:
    with open(password_file) as f:
        password = json.load(f)[user]
    driver = browser()
    try:
        wait = WebDriverWait(driver, TIMEOUT_S)
        driver.get(f"{url}/")
        # Not logged in: the UI sends the browser to the auth manager's login form.
        name = wait.until(expected_conditions.visibility_of_element_located((By.NAME, "username")))
        name.send_keys(user)
        secret = driver.find_element(By.CSS_SELECTOR, "input[type=password]")
        secret.send_keys(password, Keys.ENTER)
        wait.until(lambda d: "/auth/login" not in d.current_url)
        seen: set[str] = set()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            driver.get(f"{url}/dags")
            try:
                WebDriverWait(driver, 15).until(lambda d: any(i in d.page_source for i in dag_ids))
            except WebDriverException:
                pass
            seen = {i for i in dag_ids if i in driver.page_source}
            if seen == set(dag_ids):
                break
            time.sleep(2)  # the DAG processor has not parsed every file yet
        driver.save_screenshot(screenshot)
        print(json.dumps({"seen": sorted(seen), "title": driver.title, "url": driver.current_url}))
        return 0 if seen == set(dag_ids) else 1
    finally:
        driver.quit()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
