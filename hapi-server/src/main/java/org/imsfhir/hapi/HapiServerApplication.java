package org.imsfhir.hapi;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;

/**
 * Entry point of the ims-fhir local FHIR server: HAPI FHIR JPA, FHIR R4, in-memory H2.
 *
 * <p>Started by {@code ims_fhir/devserver.py} as
 * {@code java -jar ims-fhir-hapi-server.jar --server.port=N}; the FHIR base is
 * {@code http://127.0.0.1:N/fhir}. All wiring lives in {@link FhirServerConfig};
 * the Spring Boot settings (datasource, excluded auto-configurations) live in
 * {@code application.yaml}. Data lives only as long as the JVM.
 */
@SpringBootApplication
public class HapiServerApplication {

	public static void main(String[] args) {
		SpringApplication.run(HapiServerApplication.class, args);
	}
}
