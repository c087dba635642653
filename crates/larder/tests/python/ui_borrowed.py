"""Open a cold category on Larder's operator page that borrows a similar category's pool, in
headless Chromium: the page must say it is pending and name (and link) the category readers
get items from; following the link opens that category's ranked items.

usage: ui_borrowed.py BASE_URL CATEGORY SOURCE
"""
import sys
import urllib.parse

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import chromium

base, category, source = sys.argv[1], sys.argv[2], sys.argv[3]

driver = chromium.driver()
try:
    driver.get(base + "/ui#/categories/" + urllib.parse.quote(category, safe=""))
    sub = lambda d: d.find_element(By.ID, "detail-sub").text
    WebDriverWait(driver, 30, poll_frequency=0.25).until(lambda d: "borrowed from" in sub(d))
    text = sub(driver)
    assert driver.find_element(By.ID, "detail-title").text == category
    assert text.startswith("pending"), text
    assert text.endswith("borrowed from " + source), text
    assert not driver.find_elements(By.CSS_SELECTOR, "#items li.item"), "no own items yet"
    link = driver.find_element(By.CSS_SELECTOR, "#detail-sub a.borrowed")
    assert link.text == source, link.text
    link.click()
    items = lambda d: d.find_elements(By.CSS_SELECTOR, "#items li.item")
    WebDriverWait(driver, 30, poll_frequency=0.25).until(
        lambda d: d.find_element(By.ID, "detail-title").text == source and len(items(d)) >= 1)
    print(f"ok: {category!r} shows {text!r}; the link opens {source!r} with {len(items(driver))} items")
finally:
    driver.quit()
