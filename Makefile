# Kosh: the two quick-start targets and a few helpers. Everything builds in ./build with Ninja.
BUILD_DIR ?= build
JOBS ?= 2

.PHONY: setup build run test bench clean

setup:
	bash scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Sets up, builds, starts Kosh on the embedded store with the example schema and data (foreground).
run: build
	bash scripts/run.sh

# Sets up, builds and runs every test.
test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS) --timeout 300

bench: build
	bash bench/feature_store.sh

clean:
	rm -rf $(BUILD_DIR)
