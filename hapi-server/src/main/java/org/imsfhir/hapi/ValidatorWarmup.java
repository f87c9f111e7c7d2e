package org.imsfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ValidationResult;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.boot.web.context.WebServerGracefulShutdownLifecycle;
import org.springframework.context.SmartLifecycle;

/**
 * Validates a few sample resources once, before the web server opens its port.
 *
 * <p>The validator's first use loads and snapshots the base R4 definitions and value sets,
 * which takes seconds. Paying that before {@code /fhir/metadata} answers means "ready" really
 * is ready: the first write of a test is as fast as the next ones, so client read timeouts in
 * tests do not depend on which test happens to run first. A failure here is only logged.
 */
public class ValidatorWarmup implements SmartLifecycle {

	private static final Logger LOG = LoggerFactory.getLogger(ValidatorWarmup.class);

	/** Before Boot's web server start-stop lifecycle (DEFAULT_PHASE - 2048). */
	private static final int PHASE = WebServerGracefulShutdownLifecycle.SMART_LIFECYCLE_PHASE - 2048;

	private static final String[] SAMPLES = {
		"{\"resourceType\":\"Patient\",\"identifier\":[{\"system\":\"urn:ims-fhir:warmup\",\"value\":\"1\"}],"
				+ "\"gender\":\"female\",\"birthDate\":\"1980-01-01\"}",
		"{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"fullUrl\":"
				+ "\"urn:uuid:0b9f6a52-8f59-4f55-9d5e-3c1e2b7a0001\",\"resource\":{\"resourceType\":\"Observation\","
				+ "\"status\":\"final\",\"category\":[{\"coding\":[{\"system\":"
				+ "\"http://terminology.hl7.org/CodeSystem/observation-category\",\"code\":\"exam\"}]}],"
				+ "\"code\":{\"coding\":[{\"system\":\"http://loinc.org\",\"code\":\"72514-3\"}]},"
				+ "\"effectiveDateTime\":\"2024-01-01T10:00:00Z\",\"valueInteger\":3},"
				+ "\"request\":{\"method\":\"POST\",\"url\":\"Observation\"}}]}"
	};

	private final FhirContext fhirContext;
	private final FhirValidator validator;
	private volatile boolean running;

	public ValidatorWarmup(FhirContext fhirContext, FhirValidator validator) {
		this.fhirContext = fhirContext;
		this.validator = validator;
	}

	@Override
	public void start() {
		long started = System.nanoTime();
		for (String sample : SAMPLES) {
			try {
				ValidationResult result =
						validator.validateWithResult(fhirContext.newJsonParser().parseResource(sample));
				LOG.debug("Warm-up validation: {} message(s)", result.getMessages().size());
			} catch (RuntimeException e) {
				LOG.warn("Validator warm-up failed (the first request will be slower): {}", e.toString());
			}
		}
		LOG.info("Validator warmed up in {} ms", (System.nanoTime() - started) / 1_000_000);
		running = true;
	}

	@Override
	public void stop() {
		running = false;
	}

	@Override
	public boolean isRunning() {
		return running;
	}

	@Override
	public int getPhase() {
		return PHASE;
	}
}
