package org.imsfhir.hapi.modes;

import ca.uhn.fhir.rest.server.RestfulServer;
import java.util.Set;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.core.env.Environment;

/**
 * The optional modes of the test server, all off by default (see {@link SmartAuthSettings} and
 * {@link CapabilitySwitches} for the properties). Kept apart from {@code FhirServerConfig}: the
 * interceptors are added to the FHIR servlet when Spring has built it, and the SMART discovery
 * document gets a servlet of its own at {@code /fhir/.well-known/smart-configuration} (an exact
 * mapping wins over the FHIR servlet's {@code /fhir/*}).
 */
@Configuration
public class ServerModesConfig {

	private static final Logger LOG = LoggerFactory.getLogger(ServerModesConfig.class);

	@Bean
	public static BeanPostProcessor imsServerModes(Environment env) {
		SmartAuthSettings smart = SmartAuthSettings.from(env);
		Set<CapabilitySwitches.Feature> disabled = CapabilitySwitches.parse(env.getProperty("ims.disable", ""));
		return new BeanPostProcessor() {
			@Override
			public Object postProcessAfterInitialization(Object bean, String beanName) {
				if (bean instanceof RestfulServer server) {
					if (smart != null) {
						server.registerInterceptor(new SmartAuthInterceptor(smart));
						LOG.info("SMART mode: tokens of {} for audience {} required", smart.issuer(), smart.audience());
					}
					if (!disabled.isEmpty()) {
						server.registerInterceptor(new CapabilitySwitches(disabled));
						LOG.info("disabled capabilities: {}", disabled);
					}
				}
				return bean;
			}
		};
	}

	@Bean
	public ServletRegistrationBean<SmartConfigurationServlet> smartConfigurationServlet(Environment env) {
		SmartAuthSettings smart = SmartAuthSettings.from(env);
		ServletRegistrationBean<SmartConfigurationServlet> registration = new ServletRegistrationBean<>(
				new SmartConfigurationServlet(smart), "/fhir/.well-known/smart-configuration");
		registration.setName("smart-configuration");
		// Off unless the SMART mode is on: the open server publishes no SMART configuration.
		registration.setEnabled(smart != null);
		return registration;
	}
}
