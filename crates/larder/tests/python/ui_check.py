"""Drive Larder's operator page in headless Chromium as a person would: open /ui, wait for a
demo category to turn ready, click it, check its ranked items, and save a screenshot; then
open a deep link to another category.

usage: ui_check.py BASE_URL SCREENSHOT_PATH
"""
import sys
import urllib.parse
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import chromium

base, screenshot = sys.argv[1], sys.argv[2]

driver = chromium.driver()
try:
    driver.get(base + "/ui")
    ready_rows = lambda d: d.find_elements(By.CSS_SELECTOR, "#categories tr[data-status=ready]")
    WebDriverWait(driver, 120, poll_frequency=0.5).until(lambda d: len(ready_rows(d)) >= 1)
    row = ready_rows(driver)[0]
    name = row.get_attribute("data-category")
    row.click()
    items = lambda d: d.find_elements(By.CSS_SELECTOR, "#items li.item")
    WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: len(items(d)) >= 3)
    assert driver.execute_script("return location.hash") == "#/categories/" + urllib.parse.quote(name, safe=""), \
        driver.execute_script("return location.hash")
    assert driver.find_element(By.ID, "detail-title").text == name
    first = items(driver)[0]
    assert first.find_element(By.CSS_SELECTOR, ".text").text.strip(), "an item has text"
    assert first.find_elements(By.CSS_SELECTOR, ".bar .mean"), "an item has a score bar"
    assert "mean " in first.text and "shown" in first.text, first.text
    # The live feed shows pipeline events that arrived over /v1/events: ask for a refresh of
    # the category so there are some, however far the demo's generation has got.
    refresh = urllib.request.Request(
        base + "/v1/categories/" + urllib.parse.quote(name, safe="") + "/refresh", method="POST")
    with urllib.request.urlopen(refresh) as response:
        assert response.status == 202, response.status
    WebDriverWait(driver, 60, poll_frequency=0.5).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#feed li"))
    feed = driver.find_element(By.ID, "feed").text
    assert driver.find_element(By.ID, "stream").text == "live"
    driver.save_screenshot(screenshot)

    # A deep link opens another category directly.
    others = [r.get_attribute("data-category") for r in driver.find_elements(By.CSS_SELECTOR, "#categories tr[data-category]")]
    other = next(o for o in others if o != name)
    driver.get(base + "/ui#/categories/" + urllib.parse.quote(other, safe=""))
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "detail-title").text == other)
    print(f"ok: clicked {name!r} ({len(items(driver))} items shown), deep link {other!r}; feed: {feed.splitlines()[0]!r}")
finally:
    driver.quit()
